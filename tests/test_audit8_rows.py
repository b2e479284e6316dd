"""README "Limits and reliability" rows that had no test at the bound
exactly and one byte past it (eighth-session audit): real clients, the
flag set small."""

from __future__ import annotations

import pytest

from .conftest import request
from .test_http_strict import HEADERS_TOO_LARGE, refused, still_serving
from .test_websocket import close_code, frame, raw_handshake, read_frame

HTTP_APP = "tests.apps.http1:app"
WS_APP = "tests.apps.messages:app"


def head_of(size: int) -> bytes:
    """A request head of exactly size bytes, request line and CRLFs included."""
    start = b"GET / HTTP/1.1\r\nHost: x\r\nx-pad: "
    pad = size - len(start) - len(b"\r\n\r\n")
    assert pad >= 0
    return start + b"p" * pad + b"\r\n\r\n"


@pytest.mark.parametrize("limit", [600, 4096])
def test_request_head_at_the_bound_is_served_and_one_byte_past_gets_431(serve, limit):
    proc = serve(HTTP_APP, "--max-header-size", str(limit))
    assert len(head_of(limit)) == limit
    r = request(proc, head_of(limit))
    assert (r.status, r.body) == (200, b"Hello, world!")
    assert refused(proc, head_of(limit + 1)) == HEADERS_TOO_LARGE
    still_serving(proc)


def test_websocket_message_at_the_bound_is_echoed_and_one_byte_past_closes_1009(serve):
    proc = serve(WS_APP, "--websocket-max-message-size", "1000",
                 "--websocket-max-frame-size", "0")
    with raw_handshake(proc.port, "/echo") as sock:
        sock.sendall(frame(0x2, b"m" * 1000))
        assert read_frame(sock) == (0x2, b"m" * 1000)
        sock.sendall(frame(0x2, b"m" * 1001))
        opcode, payload = read_frame(sock)
        assert (opcode, close_code(payload)) == (0x8, 1009)
