"""Hostile TLS clients (eighth-session audit): a ClientHello byte by byte,
ALPN h2 only, one byte of plaintext per record, close_notify inside a
request, a TLS WebSocket whose peer never reads, 1,000 handshakes left
half-open.  Real server processes, Python's ssl on memory BIOs."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import ssl
import time

import httpx
import pytest

from .conftest import wait_until
from .test_http_resources import rss_kb
from .test_tls import (  # noqa: F401
    bio_handshake,
    client_ctx,
    client_hello,
    get,
    pki,
    tls_flags,
)

APP = "tests.apps.audit8:app"
# Under `make test-asan` every allocation carries ASan's redzones (and
# PYTHONMALLOC=malloc): the same handshakes hold ~67 KiB each there.
ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")


def _bio(pki, version=None, alpn=None):  # noqa: F811
    ctx = client_ctx(pki)
    if version is not None:
        ctx.maximum_version = version
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    return ctx.wrap_bio(incoming, outgoing, server_hostname="localhost"), incoming, outgoing


def _read_plain(sock, obj, incoming, until: bytes = b"", timeout: float = 10) -> tuple[bytes, bool]:
    """Plaintext until `until` is in it, or the peer's close_notify or EOF;
    returns it and whether the connection ended."""
    sock.settimeout(timeout)
    plain = b""
    while not until or until not in plain:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return plain, True
        if not data:
            return plain, True
        incoming.write(data)
        while True:
            try:
                chunk = obj.read(65536)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return plain, True
            if not chunk:  # the peer's close_notify
                return plain, True
            plain += chunk
    return plain, False


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_client_hello_byte_by_byte_is_served(serve, pki, version):  # noqa: F811
    proc = serve(APP, *tls_flags(pki))
    obj, incoming, outgoing = _bio(pki, version)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    first = outgoing.read()
    with socket.create_connection(("127.0.0.1", proc.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(first)):
            sock.sendall(first[i:i + 1])
            if i % 16 == 0:
                time.sleep(0.001)  # separate segments, separate reads
        incoming.write(sock.recv(65536))
        bio_handshake(sock, obj, incoming, outgoing)
        assert obj.version() == {ssl.TLSVersion.TLSv1_3: "TLSv1.3",
                                 ssl.TLSVersion.TLSv1_2: "TLSv1.2"}[version]
        obj.write(b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        sock.sendall(outgoing.read())
        plain, _ = _read_plain(sock, obj, incoming)
    assert plain.startswith(b"HTTP/1.1 200 "), plain
    assert plain.endswith(b"Hello, world!")


def test_alpn_offering_only_h2_is_not_given_h2(serve, pki):  # noqa: F811
    """We speak HTTP/1.1 only: an h2-only offer gets no ALPN (as nginx
    without http2; RFC 7301 allows no_application_protocol too), never h2."""
    proc = serve(APP, *tls_flags(pki))
    obj, incoming, outgoing = _bio(pki, alpn=["h2"])
    with socket.create_connection(("127.0.0.1", proc.port), timeout=10) as sock:
        try:
            bio_handshake(sock, obj, incoming, outgoing)
        except ssl.SSLError as exc:
            assert "NO_APPLICATION_PROTOCOL" in str(exc).upper(), exc
            return
        assert obj.selected_alpn_protocol() is None
        obj.write(b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        sock.sendall(outgoing.read())
        plain, _ = _read_plain(sock, obj, incoming)
    assert plain.startswith(b"HTTP/1.1 200 "), plain


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_one_byte_of_plaintext_per_record(serve, pki, version):  # noqa: F811
    """A request head and a 3,000-byte body, each byte its own record (22 or
    29 bytes of ciphertext each): all of it reaches the app, in order."""
    proc = serve(APP, *tls_flags(pki))
    body = bytes(range(256)) * 11 + b"end"
    request = (b"POST /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body)) + body
    obj, incoming, outgoing = _bio(pki, version)
    with socket.create_connection(("127.0.0.1", proc.port), timeout=10) as sock:
        bio_handshake(sock, obj, incoming, outgoing)
        for i in range(len(request)):
            obj.write(request[i:i + 1])
        wire = outgoing.read()
        assert len(wire) > 20 * len(request)  # one record per byte
        for i in range(0, len(wire), 1000):
            sock.sendall(wire[i:i + 1000])
        plain, _ = _read_plain(sock, obj, incoming)
    head, _, got = plain.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), plain[:200]
    echoed = json.loads(got)
    assert echoed["size"] == len(body)
    assert echoed["sha256"] == hashlib.sha256(body).hexdigest()


def _close_notify(sock, obj, outgoing) -> None:
    with pytest.raises(ssl.SSLWantReadError):
        obj.unwrap()
    sock.sendall(outgoing.read())


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_close_notify_inside_a_request_head_is_a_disconnect(serve, pki, version):  # noqa: F811
    proc = serve(APP, *tls_flags(pki))
    obj, incoming, outgoing = _bio(pki, version)
    with socket.create_connection(("127.0.0.1", proc.port), timeout=10) as sock:
        bio_handshake(sock, obj, incoming, outgoing)
        obj.write(b"GET /hello HTTP/1.1\r\nHost: loc")
        sock.sendall(outgoing.read())
        _close_notify(sock, obj, outgoing)
        plain, ended = _read_plain(sock, obj, incoming)
    assert ended
    assert b"HTTP/1.1" not in plain, plain  # no answer to half a head (a plain FIN's rule)
    assert get(proc, pki, "/hello").status_code == 200


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_close_notify_inside_a_request_body_gives_the_app_a_disconnect(serve, pki, version):  # noqa: F811
    proc = serve(APP, *tls_flags(pki))
    assert get(proc, pki, "/_clear").status_code == 200
    obj, incoming, outgoing = _bio(pki, version)
    with socket.create_connection(("127.0.0.1", proc.port), timeout=10) as sock:
        bio_handshake(sock, obj, incoming, outgoing)
        obj.write(b"POST /record_body HTTP/1.1\r\nHost: localhost\r\n"
                  b"Content-Length: 100\r\n\r\n" + b"x" * 10)
        sock.sendall(outgoing.read())
        time.sleep(0.2)
        _close_notify(sock, obj, outgoing)
        plain, ended = _read_plain(sock, obj, incoming)
    assert ended
    assert b"recorded" not in plain

    def report():
        r = json.loads(get(proc, pki, "/_report?key=record_body").text)
        return r["value"] if r["value"] and r["value"][-1]["type"] == "http.disconnect" else None

    msgs = wait_until(report, timeout=10)
    assert sum(m["size"] for m in msgs) == 10, msgs


def _wss_upgrade(sock, obj, incoming, outgoing) -> None:
    key = base64.b64encode(os.urandom(16))
    obj.write(b"GET /flood HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
              b"Sec-WebSocket-Key: " + key + b"\r\n\r\n")
    sock.sendall(outgoing.read())
    plain, ended = _read_plain(sock, obj, incoming, until=b"\r\n\r\n")
    assert plain.startswith(b"HTTP/1.1 101 "), plain[:200]


def test_tls_websocket_peer_that_never_reads_holds_the_app_s_sends(serve, pki):  # noqa: F811
    """The app's send() waits once --write-buffer-size is queued: what it
    got out is the buffer, the kernel's socket buffers and one TLS read's
    worth, not the 64 MiB it wanted to send; a peer that then leaves is seen."""
    proc = serve(APP, *tls_flags(pki, "--write-buffer-size", "65536"))
    pid = proc.proc.pid
    before = rss_kb(pid)
    obj, incoming, outgoing = _bio(pki)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", proc.port))
    try:
        bio_handshake(sock, obj, incoming, outgoing)
        _wss_upgrade(sock, obj, incoming, outgoing)

        def flood():
            return json.loads(get(proc, pki, "/_flood").text)

        last = -1
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the app's sends stop moving
            time.sleep(0.5)
            now = flood()["sent"]
            if now == last:
                break
            last = now
        state = flood()
        assert state["ended"] is None, state
        assert state["sent"] < 16 << 20, state
        assert rss_kb(pid) - before < 16 << 10, f"+{rss_kb(pid) - before} KiB"
    finally:
        sock.close()
    assert wait_until(lambda: flood()["ended"], timeout=15)


def test_thousand_half_open_handshakes_are_bounded_and_timed_out(serve, pki):  # noqa: F811
    """Each holds what OpenSSL keeps for half a ClientHello (measured: ~46
    KiB of RSS each, bounded: nothing grows with what the client sends after)
    and --header-timeout closes them all."""
    proc = serve(APP, *tls_flags(pki, "--header-timeout", "4"))
    pid = proc.proc.pid
    assert get(proc, pki, "/hello").status_code == 200
    before = rss_kb(pid)
    hello = client_hello()
    socks = []
    try:
        for _ in range(1000):
            s = socket.create_connection(("127.0.0.1", proc.port), timeout=10)
            s.sendall(hello[: len(hello) // 2])
            socks.append(s)
        time.sleep(1)  # all accepted and read
        grown = rss_kb(pid) - before
        per_handshake_kib = 128 if ASAN else 64
        assert grown < 1000 * per_handshake_kib, f"+{grown} KiB for 1,000 half-open handshakes"
        assert get(proc, pki, "/hello").status_code == 200
        for s in socks:
            s.settimeout(15)
            try:
                assert s.recv(4096) == b""
            except ConnectionResetError:
                pass
    finally:
        for s in socks:
            s.close()
    assert get(proc, pki, "/hello").status_code == 200
    print(f"RSS +{grown} KiB for 1,000 half-open TLS handshakes")


def test_half_open_handshakes_over_limit_concurrency_are_bounded(serve, pki):  # noqa: F811
    """Over --limit-concurrency a TLS connection is answered 503 once its
    handshake is done, so the server held every over-limit half-open
    handshake (~46 KiB each) until --header-timeout: a client could keep
    any number past the limit.  As many more as the limit, and at least
    64, are held (each gets its 503); more are closed at accept."""
    limit, opened = 4, 120
    proc = serve(APP, *tls_flags(pki, "--limit-concurrency", str(limit)))
    hello = client_hello()
    socks = []
    try:
        for _ in range(opened):
            s = socket.create_connection(("127.0.0.1", proc.port), timeout=10)
            s.sendall(hello[: len(hello) // 2])
            socks.append(s)
        time.sleep(1)  # all accepted and read
        closed = 0
        for s in socks:
            s.setblocking(False)
            try:
                if s.recv(4096) == b"":
                    closed += 1
            except ConnectionResetError:
                closed += 1
            except BlockingIOError:
                pass  # held
        assert closed >= opened - (limit + 64), closed
        assert closed < opened, closed  # the 64 over the limit were held
    finally:
        for s in socks:
            s.close()
    # Their places are free again once the server has seen them go: a
    # client is served (until then it may get a 503 or a close).

    def served() -> bool:
        try:
            return get(proc, pki, "/hello").status_code == 200
        except httpx.HTTPError:
            return False

    assert wait_until(served, timeout=10)
