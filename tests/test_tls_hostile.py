"""TLS against hostile and unusual clients: what a connection keeps after
a large response, records cut anyhow, peers that close or flood in odd
ways.  Real server processes, real TLS clients (Python's ssl, openssl)."""

from __future__ import annotations

import json
import socket
import ssl

import pytest

from .conftest import Reader
from .test_http_resources import rss_kb
from .test_tls import (  # noqa: F401
    APP,
    client_ctx,
    get,
    pki,
    tls_connect,
    tls_flags,
    tls_server,
)


def test_idle_conns_give_back_a_large_response_s_ciphertext(tls_server, pki):  # noqa: F811
    # Regression: OpenSSL's output memory BIO keeps the largest size it
    # ever held, and a flush encrypted all of c->outq into it at once: a
    # 4 MiB response in one body message left 4 MiB on each idle
    # keep-alive conn (40 conns: +160 MiB; plain HTTP: +4 MiB).
    pid = tls_server.proc.pid
    size = 4 << 20
    path = b"/stream?n=1&size=%d" % size
    warm = tls_connect(tls_server, pki)
    warm.sendall(b"GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % path)
    assert len(Reader(warm, timeout=30).response().body) == size
    before = rss_kb(pid)
    held = [warm]
    try:
        for _ in range(40):
            sock = tls_connect(tls_server, pki)
            held.append(sock)
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % path)
            assert len(Reader(sock, timeout=30).response().body) == size
        grown = rss_kb(pid) - before
        assert grown < 48 << 10, f"{grown} KiB for 40 idle conns"
        # They are still usable.
        held[-1].sendall(b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert Reader(held[-1]).response().body == b"Hello, world!"
    finally:
        for sock in held:
            sock.close()
    assert get(tls_server, pki, "/hello").status_code == 200


def test_idle_conns_give_back_the_read_buffer_of_an_upload(serve, pki):  # noqa: F811
    # Regression: the ciphertext of each socket read went through a memory
    # BIO that kept its largest size: every conn that ever read a full
    # --tls-read-size kept 4/3 of it while idle (a plain conn keeps no
    # input buffer when idle).
    proc = serve(APP, *tls_flags(pki, "--tls-read-size", "1048576"))
    pid = proc.proc.pid
    body = b"u" * (4 << 20)
    request = b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % len(body)

    def upload(sock) -> None:
        sock.sendall(request + body)
        assert json.loads(Reader(sock, timeout=30).response().body)["size"] == len(body)

    held = [tls_connect(proc, pki)]
    try:
        upload(held[0])
        before = rss_kb(pid)
        for _ in range(40):
            held.append(tls_connect(proc, pki))
            upload(held[-1])
        grown = rss_kb(pid) - before
        assert grown < 16 << 10, f"{grown} KiB for 40 idle conns"
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize("endpoint", [False, True])
def test_tls12_client_with_python_s_default_ciphers_is_served_with_aead(serve, pki, endpoint):  # noqa: F811
    # Regression: the default cipher list was uvicorn's old "TLSv1", which
    # leaves TLS 1.2 only CBC suites with SHA-1: Python's ssl (3.10+,
    # httpx, websockets) offers none of them, so a client capped at TLS
    # 1.2 got a handshake_failure alert.  uvicorn now leaves OpenSSL's
    # defaults, Daphne (Twisted) prefers ECDHE with AES-GCM/ChaCha20.
    if endpoint:
        ep = (
            f"ssl:0:privateKey={pki / 'server.key'}:certKey={pki / 'server.pem'}"
            ":interface=127.0.0.1"
        )
        proc = serve(APP, "-e", ep, port=False)
    else:
        proc = serve(APP, *tls_flags(pki))
    ctx = client_ctx(pki)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    raw = socket.create_connection(("127.0.0.1", proc.port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
        assert sock.version() == "TLSv1.2"
        name, _, _ = sock.cipher()
        assert name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name), name
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert Reader(sock).response().body == b"Hello, world!"


def test_close_notify_from_the_client_is_answered_with_ours(tls_server, pki):  # noqa: F811
    # Regression: the peer's close_notify ended the conn without ours, so
    # a client that closes cleanly and waits for the answer (Python's
    # unwrap(), as asyncio's SSL transport does too) saw an EOF "in
    # violation of protocol".  uvicorn (asyncio) answers it.
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        ctx = client_ctx(pki)
        ctx.maximum_version = version
        raw = socket.create_connection(("127.0.0.1", tls_server.port), timeout=10)
        sock = ctx.wrap_socket(raw, server_hostname="localhost")
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert Reader(sock).response().body == b"Hello, world!"
        plain = sock.unwrap()  # Sends ours, reads the server's close_notify.
        assert plain.recv(100) == b""
        plain.close()
    assert get(tls_server, pki, "/hello").status_code == 200
