"""The one response-head writer (http.response.start, the 101 handshake,
the server's own error responses): long server names, the longest fixed
parts, hostile header sequences from the app, header injection.

Servers run with glibc's malloc checks on, so that an overflow of the head
buffer aborts the process instead of passing unnoticed."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import socket
from urllib.parse import unquote

import h11
import pytest

from .conftest import Reader, connect, is_closed, recv_all, request

APP = "tests.apps.wire:app"
# Free chunks are not cached and are filled with a pattern: a write past
# the end of a block corrupts the heap where glibc checks it.
MALLOC_CHECKS = {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0:glibc.malloc.perturb=65"}
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@pytest.fixture
def wire(serve):
    def start(*flags: str):
        return serve(APP, *flags, env=MALLOC_CHECKS)
    return start


def alive(proc) -> None:
    r = request(proc, b"GET /?len=2 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (r.status, r.body) == (200, b"bb")
    assert proc.proc.poll() is None


# ---- http.response.start ---------------------------------------------------

@pytest.mark.parametrize("name_len", [14, 200])
def test_431_streamed_with_connection_close_and_a_long_server_name(wire, name_len):
    name = "s" * name_len
    proc = wire("-s", name)
    for _ in range(3):
        with connect(proc) as sock:
            sock.sendall(b"GET /?status=431&stream=1&close=1&len=7 HTTP/1.1\r\nHost: x\r\n\r\n")
            reader = Reader(sock)
            r = reader.response()
            assert r.status == 431
            assert r.reason == "Request Header Fields Too Large"
            assert r.chunked and r.body == b"b" * 7
            assert r.header("server") == name
            assert r.header("connection") == "close"
            assert r.header("transfer-encoding") == "chunked"
            assert is_closed(sock)
    alive(proc)


@pytest.mark.parametrize("name_len", [14, 200])
@pytest.mark.parametrize("body_len", [10, 99])
def test_http10_keep_alive_with_a_short_body_and_a_long_server_name(wire, name_len,
                                                                    body_len):
    name = "n" * name_len
    proc = wire("-s", name)
    with connect(proc) as sock:
        reader = Reader(sock)
        for _ in range(3):
            sock.sendall(b"GET /?status=431&len=%d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                         % body_len)
            r = reader.response()
            assert (r.status, r.version) == (431, "HTTP/1.1")
            assert r.body == b"b" * body_len
            assert r.header("content-length") == str(body_len)
            assert r.header("connection") == "keep-alive"
            assert r.header("server") == name
    alive(proc)


def test_head_has_one_date_one_server_and_ends_once(wire):
    proc = wire("-s", "x" * 300)
    r = request(proc, b"GET /?len=3 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.raw_head.count(b"\r\n\r\n") == 1
    assert len(r.header_all("date")) == 1
    assert r.header_all("server") == ["x" * 300]
    assert r.header("content-length") == "3"


DATE_RE = rb"date: [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT\r\n"


@pytest.mark.parametrize("value", ["close", "Close", "keep-alive,close"])
@pytest.mark.parametrize("req_close", [False, True], ids=["ka_request", "close_request"])
def test_app_connection_close_goes_out_once_and_the_server_closes(wire, value, req_close):
    # uvicorn and h11 close after a response whose app said close; the
    # head carries the app's field and not a second one of ours.
    proc = wire("-s", "srv")
    with connect(proc) as sock:
        sock.sendall(
            b"GET /?len=5&conn=%s HTTP/1.1\r\nHost: x\r\n%s\r\n"
            % (value.encode(), b"Connection: close\r\n" if req_close else b"")
        )
        r = Reader(sock).response()
        assert r.body == b"bbbbb"
        # The app's keep-alive is left out: the conn closes.
        sent = "close" if value == "keep-alive,close" else value
        assert re.fullmatch(
            rb"HTTP/1\.1 200 OK\r\nconnection: "
            + re.escape(sent.encode())
            + rb"\r\ncontent-length: 5\r\n"
            + DATE_RE
            + rb"server: srv\r\n\r\n",
            r.raw_head,
        ), r.raw_head
        assert is_closed(sock)
    alive(proc)


@pytest.mark.parametrize(
    "value", ["closed", "keep-alive,%20x-close-ish", "x-close", "Close-Later", "closer,keep-alive",
              "unclose,%09", '"close"'])
def test_app_connection_options_are_tokens_not_substrings(wire, value):
    # Regression: "close" anywhere in the app's field closed the conn.
    # RFC 9110 7.6.1: a comma-separated list of tokens.
    proc = wire("-s", "srv")
    with connect(proc) as sock:
        reader = Reader(sock)
        for _ in range(2):
            sock.sendall(b"GET /?len=2&conn=%s HTTP/1.1\r\nHost: x\r\n\r\n" % value.encode())
            r = reader.response()
            assert r.body == b"bb"
            assert r.header_all("connection") == [unquote(value).strip()]
        assert not is_closed(sock, 0.2)
    alive(proc)


@pytest.mark.parametrize("value", ["x-a,%20CLOSE%20", "a,,close,", "%09close%09", "close,close",
                                   ",%20,cLoSe"])
def test_app_connection_close_token_anywhere_in_the_list_closes(wire, value):
    proc = wire("-s", "srv")
    with connect(proc) as sock:
        sock.sendall(b"GET /?len=2&conn=%s HTTP/1.1\r\nHost: x\r\n\r\n" % value.encode())
        r = Reader(sock).response()
        assert r.body == b"bb"
        assert r.header_all("connection") == [unquote(value).strip()]
        assert is_closed(sock)
    alive(proc)


def h11_response(raw: bytes) -> tuple[h11.Response, bytes]:
    """The response in raw as h11 (a strict client) reads it; h11 must
    find it well-formed and see that the conn closes after it."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(raw)
    conn.receive_data(b"")
    resp, body = None, b""
    while True:
        ev = conn.next_event()
        if isinstance(ev, h11.Response):
            resp = ev
        elif isinstance(ev, h11.Data):
            body += ev.data
        elif isinstance(ev, h11.EndOfMessage):
            break
        else:
            raise AssertionError(f"h11: {ev!r}")
    assert conn.their_state is h11.MUST_CLOSE
    assert resp is not None
    return resp, body


# (request line and fields, the app's connection field, %-encoded in conn=,
# the connection fields that must go out).
MUST_CLOSE = {
    "http10": (b"GET /?len=3&conn=keep-alive HTTP/1.0\r\n", ["close"]),
    "http10_other_option": (b"GET /?len=3&conn=keep-alive,%20x-foo HTTP/1.0\r\n",
                            ["x-foo", "close"]),
    "http10_close_delimited": (b"GET /?len=3&stream=1&conn=keep-alive HTTP/1.0\r\n"
                               b"Connection: keep-alive\r\n", ["close"]),
    "client_close": (b"GET /?len=3&conn=Keep-Alive HTTP/1.1\r\nHost: x\r\n"
                     b"Connection: close\r\n", ["close"]),
    "client_close_streamed": (b"GET /?len=3&stream=1&conn=keep-alive HTTP/1.1\r\nHost: x\r\n"
                              b"Connection: close\r\n", ["close"]),
    "app_says_both": (b"GET /?len=3&conn=keep-alive,close HTTP/1.1\r\nHost: x\r\n", ["close"]),
    "app_says_both_and_more": (b"GET /?len=3&conn=x-foo,%20KEEP-ALIVE%20,%20close,keep-alive "
                               b"HTTP/1.1\r\nHost: x\r\n", ["x-foo, close"]),
    "half_close": (b"GET /?len=3&delay=0.3&conn=keep-alive HTTP/1.1\r\nHost: x\r\n", ["close"]),
}


@pytest.mark.parametrize("case", list(MUST_CLOSE))
def test_app_keep_alive_is_left_out_when_the_conn_closes(wire, case):
    # Regression: the head said "connection: keep-alive" from the app and
    # "connection: close" from us; it now says only what is true.
    head, want = MUST_CLOSE[case]
    proc = wire("-s", "srv")
    with connect(proc) as sock:
        sock.sendall(head + b"\r\n")
        if case == "half_close":
            sock.shutdown(socket.SHUT_WR)
        raw = recv_all(sock)
    resp, body = h11_response(raw)
    assert body == b"bbb"
    got = [v.decode() for k, v in resp.headers if k == b"connection"]
    assert got == want
    assert b"keep-alive" not in raw.partition(b"\r\n\r\n")[0].lower()
    alive(proc)


def test_app_connection_close_on_a_streamed_response(wire):
    proc = wire("-s", "srv")
    with connect(proc) as sock:
        sock.sendall(b"GET /?len=4&stream=1&conn=close HTTP/1.1\r\nHost: x\r\n\r\n")
        r = Reader(sock).response()
        assert r.chunked and r.body == b"bbbb"
        assert r.header_all("connection") == ["close"]
        assert is_closed(sock)
    alive(proc)


def test_app_keep_alive_to_an_http10_keep_alive_request_goes_out_once(wire):
    proc = wire("-s", "srv")
    with connect(proc) as sock:
        reader = Reader(sock)
        for _ in range(2):
            sock.sendall(b"GET /?len=3&conn=keep-alive HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            r = reader.response()
            assert r.body == b"bbb"
            assert re.fullmatch(
                rb"HTTP/1\.1 200 OK\r\nconnection: keep-alive\r\n"
                rb"content-length: 3\r\n" + DATE_RE + rb"server: srv\r\n\r\n",
                r.raw_head,
            ), r.raw_head
    alive(proc)


def test_server_error_response_carries_a_long_server_name(wire):
    # A head the server writes by itself (400) with the 200-char name.
    proc = wire("-s", "e" * 200)
    with connect(proc) as sock:
        sock.sendall(b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n")
        r = Reader(sock).response()
    assert (r.status, r.body) == (400, b"Bad Request")
    assert r.header("server") == "e" * 200
    assert r.header("connection") == "close"
    alive(proc)


# ---- the 101 handshake ------------------------------------------------------

def handshake(proc, path: str, protocols: str | None = None) -> tuple[bytes, Reader,
                                                                      socket.socket]:
    """Send a WebSocket handshake; returns (key, a reader, the socket)."""
    sock = connect(proc)
    key = base64.b64encode(os.urandom(16))
    extra = b"Sec-WebSocket-Protocol: %s\r\n" % protocols.encode() if protocols else b""
    sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key +
                 b"\r\nSec-WebSocket-Version: 13\r\n" + extra + b"\r\n")
    return key, Reader(sock), sock


def accept_value(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def test_accept_with_a_200_char_server_name(wire):
    proc = wire("-s", "w" * 200)
    for _ in range(3):
        key, reader, sock = handshake(proc, "/?mode=plain")
        with sock:
            head = reader.read_until(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
            assert b"\r\nsec-websocket-accept: " + accept_value(key) + b"\r\n" in head
            assert b"\r\nserver: " + b"w" * 200 + b"\r\n" in head
            assert b"\r\nx-plain: 1\r\n" in head
            assert head.count(b"\r\n\r\n") == 1
    alive(proc)


def test_accept_headers_whose_items_change_between_reads(wire):
    # The writer reads the app's sequence once: the 100 KB (or non-bytes)
    # item a second read would return is never seen.
    proc = wire()
    for mode in ("shifty_long", "shifty_nonbytes"):
        _, reader, sock = handshake(proc, f"/?mode={mode}")
        with sock:
            head = reader.read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        assert b"\r\nx-shift: short\r\n" in head
        assert len(head) < 1000
    alive(proc)


@pytest.mark.parametrize("reason,exc", [
    ("str", None),
    # It said "bad argument type for built-in operation".
    ("bytes", "TypeError: the close reason must be str or None, not bytes"),
    ("int", "TypeError: the close reason must be str or None, not int"),
])
def test_a_close_reason_that_is_not_str_raises_in_send(wire, reason, exc):
    proc = wire()
    _, reader, sock = handshake(proc, f"/?mode=plain&reason={reason}")
    with sock:
        assert b" 101 " in reader.read_until(b"\r\n\r\n")
        mask = os.urandom(4)
        sock.sendall(b"\x81\x82" + mask + bytes(b ^ mask[i] for i, b in enumerate(b"hi")))
        assert reader.read_exact(4) == b"\x81\x02hi"
        head = reader.read_exact(2)
        got = head + reader.read_exact(head[1])
    if exc is None:
        assert got == b"\x88\x05\x03\xe8bye"
    else:
        assert got == b"\x88\x02\x03\xf3"  # 1011: the app raised
        proc.wait_log(re.escape(exc))
    alive(proc)


def test_app_server_header_replaces_the_default_in_the_handshake(wire):
    proc = wire("-s", "default-name")
    _, reader, sock = handshake(proc, "/?mode=app_server")
    with sock:
        head = reader.read_until(b"\r\n\r\n")
    assert b"\r\nserver: app-server\r\n" in head
    assert b"default-name" not in head


@pytest.mark.parametrize("mode,exc", [
    ("nonbytes", "ValueError: Header value 'not bytes' expected to be `bytes`"),
    ("crlf_value", "ValueError: invalid character in the value of header b'x-a'"),
    ("nul_value", "ValueError: invalid character in the value of header b'x-a'"),
    ("bad_name", "ValueError: invalid header name"),
    ("crlf_subprotocol", "ValueError: invalid character in subprotocol"),
    # It said "bad argument type for built-in operation".
    ("bytes_subprotocol", "TypeError: the subprotocol must be str or None, not bytes"),
])
def test_bad_accept_raises_in_send_and_refuses_the_handshake(wire, mode, exc):
    # The exception leaves the app, so the handshake is refused with 500;
    # nothing the app gave reaches the wire.
    proc = wire()
    _, reader, sock = handshake(proc, f"/?mode={mode}", protocols="chat")
    with sock:
        r = reader.response()
        rest = reader.read_to_eof()
    assert r.status == 500
    assert b"injected" not in r.raw_head + r.body + rest
    assert r.header("connection") == "close"
    proc.wait_log(re.escape(exc))
    alive(proc)
