"""TLS against hostile and unusual clients: what a connection keeps after
a large response, records cut anyhow, peers that close or flood in odd
ways.  Real server processes, real TLS clients (Python's ssl, openssl)."""

from __future__ import annotations

import json

from .conftest import Reader
from .test_http_resources import rss_kb
from .test_tls import APP, get, pki, tls_connect, tls_flags, tls_server  # noqa: F401


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
