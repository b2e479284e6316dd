"""receive() and send() that lose nothing when the app cancels them, and the
bounds of a WebSocket's queued input (real server, raw sockets)."""

from __future__ import annotations

import socket
import struct
import time

import httpx
import psutil
import pytest

from .conftest import Reader, connect
from .test_websocket import close_code, frame, raw_handshake, read_frame

APP = "tests.apps.messages:app"


def binary_frame(payload: bytes) -> bytes:
    """A masked binary frame, quickly: an all-zero mask leaves the payload as is."""
    return bytes([0x82, 0x80 | 127]) + struct.pack("!Q", len(payload)) + b"\0\0\0\0" + payload


def text_frame(sock: socket.socket) -> str:
    opcode, payload = read_frame(sock)
    assert opcode == 0x1, (opcode, payload[:80])
    return payload.decode()


# ---- HTTP: a cancelled receive() keeps the body ---------------------------

def test_body_chunks_survive_receive_timeouts(serve):
    proc = serve(APP)
    with connect(proc) as sock:
        sock.sendall(b"POST /body-timeouts HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 10\r\n\r\n")
        time.sleep(0.35)  # Several wait_for(receive(), 0.1) time out.
        sock.sendall(b"hello")
        time.sleep(0.35)
        sock.sendall(b"world")
        resp = Reader(sock).response()
    assert resp.status == 200, (resp, proc.log_tail())
    assert resp.body == b"helloworld"
    assert int(resp.header("x-timeouts")) >= 2


def test_body_chunk_stays_when_the_woken_receive_is_cancelled(serve):
    proc = serve(APP)
    with connect(proc) as sock:
        sock.sendall(b"POST /body-race HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 10\r\n\r\n")
        time.sleep(0.2)
        sock.sendall(b"hello")
        time.sleep(0.2)
        sock.sendall(b"world")
        resp = Reader(sock).response()
    assert resp.status == 200, (resp, proc.log_tail())
    assert resp.header("x-woken") == "1"
    assert resp.body == b"helloworld"


def test_body_stays_when_receive_is_never_awaited(serve):
    proc = serve(APP)
    with connect(proc) as sock:
        sock.sendall(b"POST /body-zero-timeout HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 5\r\n\r\nhello")
        resp = Reader(sock).response()
    assert resp.status == 200, (resp, proc.log_tail())
    assert resp.body == b"hello"


def test_receive_awaitable_takes_throw_and_close_and_keeps_the_body(serve):
    proc = serve(APP)
    with connect(proc) as sock:
        sock.sendall(b"POST /awaitable-throw-close HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 5\r\n\r\nhello")
        resp = Reader(sock).response()
    assert resp.status == 200, (resp, proc.log_tail())
    assert resp.header("x-thrown") == "thrown"
    assert resp.header("x-closed") == "None"
    assert resp.body == b"hello"


def test_awaitables_driven_by_hand_end_with_stop_iteration(serve):
    proc = serve(APP)
    with connect(proc) as sock:
        sock.sendall(b"POST /awaitable-by-hand HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 5\r\n\r\nhello")
        resp = Reader(sock).response()
    assert resp.status == 200, (resp, proc.log_tail())
    assert resp.header("x-got") == "hello"
    assert resp.body == b"aNone None"


# ---- WebSocket: cancelled receive() and send() -----------------------------

def test_ws_messages_survive_receive_timeouts(serve):
    proc = serve(APP)
    with raw_handshake(proc.port, "/slow-receive") as sock:
        sent = [f"m{i}" for i in range(6)]
        for text in sent:
            time.sleep(0.12)  # Two wait_for(receive(), 0.05) time out each gap.
            sock.sendall(frame(0x1, text.encode()))
        got = [text_frame(sock) for _ in sent]
        assert got == sent
        sock.sendall(frame(0x8, struct.pack("!H", 1000)))
        assert read_frame(sock)[0] == 0x8


def test_ws_message_stays_when_the_woken_receive_is_cancelled(serve):
    proc = serve(APP)
    with raw_handshake(proc.port, "/race") as sock:
        assert text_frame(sock) == "ready"
        time.sleep(0.1)
        sock.sendall(frame(0x1, b"first"))
        assert text_frame(sock) == "woken=1 got=first"
        sock.sendall(frame(0x1, b"second"))
        assert text_frame(sock) == "second"


def test_ws_message_stays_when_receive_is_never_awaited(serve):
    # wait_for(receive(), 0) cancels its task before receive() runs: the
    # message queued then is the next receive()'s (the fuzzer's finding).
    proc = serve(APP)
    with raw_handshake(proc.port, "/zero-timeout") as sock:
        assert text_frame(sock) == "ready"
        sock.sendall(frame(0x1, b"one") + frame(0x1, b"two") + frame(0x1, b"three"))
        assert text_frame(sock) == "one two"
        assert text_frame(sock) == "three"
        sock.sendall(frame(0x8, struct.pack("!H", 1000)))
        assert read_frame(sock)[0] == 0x8


def test_ws_sends_go_on_after_a_cancelled_drain_wait(serve):
    proc = serve(APP)
    with raw_handshake(proc.port, "/slow-send") as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        time.sleep(1.5)  # Not reading: wait_for(send(), 0.2) times out.
        sock.settimeout(10)
        for i in range(40):
            opcode, payload = read_frame(sock)
            assert opcode == 0x2
            assert payload == bytes([i]) * (256 * 1024 + 1), f"frame {i} corrupted"
        done = text_frame(sock)
        assert done.startswith("done timeouts=")
        assert int(done.split("=")[1]) >= 1, done
        sock.sendall(frame(0x1, b"still here"))
        assert text_frame(sock) == "still here"


# ---- WebSocket: queued input is bounded in bytes --------------------------

def test_ws_unread_input_is_bounded_in_bytes_and_all_delivered(serve):
    proc = serve(APP)
    server = psutil.Process(proc.proc.pid)
    with raw_handshake(proc.port, "/hold") as sock:
        messages = [binary_frame(bytes([i]) * (1 << 20)) for i in range(40)]
        data = memoryview(b"".join(messages))
        time.sleep(0.2)
        before = server.memory_info().rss
        # The app never receives: send what the server will take in 3 s.
        sock.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 3
        while sent < len(data) and time.monotonic() < deadline:
            try:
                sent += sock.send(data[sent:sent + 65536])
            except BlockingIOError:
                time.sleep(0.01)
        time.sleep(0.3)
        grown = server.memory_info().rss - before
        assert sent < len(data), "the server read everything: no backpressure"
        assert grown < 12 * (1 << 20), f"server RSS grew {grown / (1 << 20):.1f} MiB"
        # Now the app receives: every message arrives, in order.
        assert httpx.get(proc.url("/go")).status_code == 200
        sock.setblocking(True)
        sock.settimeout(20)
        sock.sendall(data[sent:])
        assert text_frame(sock) == f"count=40 in_order=True sizes=[{1 << 20}]"


def next_data_frame(sock: socket.socket) -> tuple[int, bytes]:
    """The next frame that is not a ping (answered with a pong)."""
    while True:
        opcode, payload = read_frame(sock)
        if opcode != 0x9:
            return opcode, payload
        sock.sendall(frame(0xA, payload))


def test_ws_peer_is_not_dropped_for_pongs_the_server_did_not_read(serve):
    # Reading stays paused for 3.5 s, well past interval + timeout (1.7 s);
    # once it resumes, this pong-less client has 1.5 s before it may be
    # dropped, time enough for a slow (sanitized, loaded) server to answer.
    proc = serve(APP, "--ping-interval", "0.2", "--ping-timeout", "1.5")
    with raw_handshake(proc.port, "/hold") as sock:
        data = memoryview(b"".join(binary_frame(bytes([i]) * (1 << 20)) for i in range(40)))
        sock.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 3.5  # Pings go unanswered meanwhile.
        while sent < len(data) and time.monotonic() < deadline:
            try:
                sent += sock.send(data[sent:sent + 65536])
            except BlockingIOError:
                time.sleep(0.01)
        assert sent < len(data)
        assert httpx.get(proc.url("/go")).status_code == 200
        sock.setblocking(True)
        sock.settimeout(20)
        sock.sendall(data[sent:])
        opcode, payload = next_data_frame(sock)
        assert (opcode, payload) == (0x1, f"count=40 in_order=True sizes=[{1 << 20}]".encode())


# ---- WebSocket close details ----------------------------------------------

def test_ws_close_reason_is_cut_at_a_character_boundary(serve):
    proc = serve(APP)
    with raw_handshake(proc.port, "/close-long") as sock:
        opcode, payload = read_frame(sock)
        assert opcode == 0x8
        assert close_code(payload) == 4001
        assert len(payload) <= 125
        assert payload[2:].decode("utf-8") == "é" * 61


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1011, 1012, 1014, 3000, 4999])
def test_ws_app_close_code_in_range_is_sent(serve, code):
    proc = serve(APP)
    with raw_handshake(proc.port, f"/close-code?{code}") as sock:
        opcode, payload = read_frame(sock)
        assert (opcode, close_code(payload)) == (0x8, code)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000,
                                  65536 + 1000, -1])
def test_ws_app_close_code_out_of_range_raises_value_error(serve, code):
    proc = serve(APP)
    with raw_handshake(proc.port, f"/close-code?{code}") as sock:
        opcode, payload = read_frame(sock)
        assert (opcode, close_code(payload)) == (0x8, 4000)
        assert payload[2:].startswith(b"ValueError"), payload


# ---- --websocket-max-frame-size ---------------------------------------------

@pytest.fixture
def small_frames(serve):
    return serve(APP, "--websocket-max-frame-size", "1000",
                 "--websocket-max-message-size", "100000")


def test_ws_fragments_within_the_frame_limit_pass(small_frames):
    with raw_handshake(small_frames.port, "/echo") as sock:
        sock.sendall(frame(0x2, b"a" * 1000, fin=False) + frame(0x0, b"b" * 1000, fin=False)
                     + frame(0x0, b"c" * 500))
        opcode, payload = read_frame(sock)
        assert (opcode, payload) == (0x2, b"a" * 1000 + b"b" * 1000 + b"c" * 500)


def test_ws_frame_over_the_limit_closes_1009(small_frames):
    with raw_handshake(small_frames.port, "/echo") as sock:
        sock.sendall(frame(0x2, b"x" * 1001))
        opcode, payload = read_frame(sock)
        assert (opcode, close_code(payload)) == (0x8, 1009)


def test_ws_continuation_over_the_frame_limit_closes_1009(small_frames):
    with raw_handshake(small_frames.port, "/echo") as sock:
        sock.sendall(frame(0x1, b"a" * 10, fin=False) + frame(0x0, b"b" * 2000))
        opcode, payload = read_frame(sock)
        assert (opcode, close_code(payload)) == (0x8, 1009)


def test_ws_frame_header_over_the_limit_closes_before_the_payload(small_frames):
    with raw_handshake(small_frames.port, "/echo") as sock:
        # The start of a 50,000-byte frame: the server must not wait for the rest.
        sock.sendall(bytes([0x82, 0x80 | 126]) + struct.pack("!H", 50000) + b"\0" * 4
                     + b"x" * 100)
        opcode, payload = read_frame(sock)
        assert (opcode, close_code(payload)) == (0x8, 1009)
