"""WebSocket behaviour of a real cdaphne process, with real clients."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import websocket
import websockets
import websockets.sync.client

from .conftest import Reader, is_closed, readable
from .serverproc import ServerProcess, start_server

APP = "tests.apps.wsbehaviour:app"


@contextmanager
def running(app: str, *flags: str) -> Iterator[ServerProcess]:
    """A server for a block of tests; it must stop cleanly afterwards."""
    proc = start_server(app, *flags)
    try:
        yield proc
    finally:
        code = proc.stop()
    assert code == 0, proc.log_tail()
    assert "Fatal Python error" not in proc.log


def events(server: ServerProcess) -> list[dict]:
    return httpx.get(server.url("/events")).json()


def wait_events(server: ServerProcess, kind: str, timeout: float = 5) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in events(server) if e["event"] == kind]
        if found:
            return found
        time.sleep(0.05)
    return []


# ---- a raw client for what the libraries won't do -----------------------

def raw_handshake(port: int, path: str = "/") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, "closed during handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes([first, (0x80 if masked else 0) | n])
    elif n < 65536:
        head = bytes([first, (0x80 if masked else 0) | 126]) + struct.pack("!H", n)
    else:
        head = bytes([first, (0x80 if masked else 0) | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_frame(sock: socket.socket) -> tuple[int, bytes]:
    def exact(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    b0, b1 = exact(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", exact(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", exact(8))[0]
    assert not b1 & 0x80, "server frames are never masked"
    return b0 & 0x0F, exact(n)


def close_code(payload: bytes) -> int:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


@pytest.fixture(scope="module")
def server():
    with running(APP, "--ping-interval", "0", "--websocket-max-message-size", "65536") as s:
        yield s


# ---- messages ------------------------------------------------------------

def test_text_and_binary_echo(server):
    ws = websocket.create_connection(server.ws_url("/echo"))
    ws.send("héllo wörld")
    assert ws.recv() == "héllo wörld"
    ws.send_binary(b"\x00\xff" * 1000)
    assert ws.recv() == b"\x00\xff" * 1000
    ws.close()


@pytest.mark.parametrize("size", [0, 1, 125, 126, 1024, 1025, 65535, 65536])
def test_echo_frames_at_the_header_and_copy_bounds(server, size):
    sock = raw_handshake(server.port, "/echo")
    payload = bytes(i % 251 for i in range(size))
    sock.sendall(frame(0x2, payload) + frame(0x1, b"t" * size))
    assert read_frame(sock) == (0x2, payload)
    assert read_frame(sock) == (0x1, b"t" * size)
    sock.close()


def test_fragmented_message_is_reassembled(server):
    sock = raw_handshake(server.port, "/echo")
    sock.sendall(frame(0x1, b"frag", fin=False) + frame(0x0, b"men", fin=False))
    sock.sendall(frame(0x9, b"ping-in-between") + frame(0x0, b"ted"))
    assert read_frame(sock) == (0xA, b"ping-in-between")
    assert read_frame(sock) == (0x1, b"fragmented")
    sock.close()


def test_coalesced_and_split_frames_echo_in_order(server):
    """Whole frames of every length encoding, a ping among them, first all in
    one write and then one byte per write: each echoed, in order."""
    messages = [(0x1, "é" * n) for n in (0, 1, 62, 63)] + [
        (0x2, bytes([n % 256]) * n) for n in (0, 125, 126, 300, 65535)
    ]
    data = b"".join(frame(op, m.encode() if isinstance(m, str) else m) for op, m in messages[:4])
    data += frame(0x9, b"between") + b"".join(frame(op, m) for op, m in messages[4:])
    for chunks in ([data], [data[i : i + 1] for i in range(200)] + [data[200:]]):
        sock = raw_handshake(server.port, "/echo")
        for chunk in chunks:
            sock.sendall(chunk)
        got = [read_frame(sock) for _ in range(len(messages) + 1)]
        want = [(op, m.encode() if isinstance(m, str) else m) for op, m in messages]
        # The pong needs no app: it may overtake echoes, never come twice.
        assert [f for f in got if f[0] != 0xA] == want
        assert [f for f in got if f[0] == 0xA] == [(0xA, b"between")]
        sock.close()


def _non_minimal_length() -> bytes:
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(b"short"))
    return bytes([0x82, 0x80 | 126]) + struct.pack("!H", 5) + mask + masked


def _reserved_bit() -> bytes:
    bad = bytearray(frame(0x2, b"short"))
    bad[0] |= 0x40
    return bytes(bad)


# RFC 6455 7.1.7: each one fails the connection with a close frame.
BAD_FRAMES = {
    "non-minimal-length": (_non_minimal_length, 1002),
    "rsv1-without-extension": (_reserved_bit, 1002),
    "ping-over-125-bytes": (lambda: frame(0x9, b"p" * 126), 1002),
    "fragmented-ping": (lambda: frame(0x9, b"p", fin=False), 1002),
    "reserved-opcode": (lambda: frame(0x3, b"short"), 1002),
    "continuation-first": (lambda: frame(0x0, b"short"), 1002),
    "unmasked": (lambda: frame(0x2, b"short", masked=False), 1002),
    "invalid-utf8": (lambda: frame(0x1, b"\xc3\x28 bad"), 1007),
}


def frames_until_eof(sock: socket.socket) -> list[tuple[int, bytes]]:
    got = []
    while True:
        try:
            got.append(read_frame(sock))
        except ConnectionError:
            return got


@pytest.mark.parametrize("bad", BAD_FRAMES)
def test_protocol_error_after_a_good_frame_fails_with_a_close_frame(server, bad):
    """A good frame and a bad one in one write: the server sends a close frame
    with the code (no data frame after it: the echo of the good frame comes
    too late), then ends TCP; the app gets the good message, then
    websocket.disconnect with that code."""
    make, code = BAD_FRAMES[bad]

    def new_events_after_disconnect(before: int) -> list[dict]:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            new = events(server)[before:]
            if any(e["event"] == "websocket.disconnect" for e in new):
                break
            time.sleep(0.05)
        return new

    before = len(events(server))
    sock = raw_handshake(server.port, "/echo")
    sock.sendall(frame(0x1, b"ok") + make() + frame(0x1, b"never"))
    got = frames_until_eof(sock)
    sock.close()
    assert [(op, close_code(p)) for op, p in got] == [(0x8, code)]
    assert new_events_after_disconnect(before)[-1] == {
        "event": "websocket.disconnect",
        "code": code,
    }

    before = len(events(server))
    sock = raw_handshake(server.port, "/record")
    sock.sendall(frame(0x1, b"ok") + make() + frame(0x1, b"never"))
    assert [(op, close_code(p)) for op, p in frames_until_eof(sock)] == [(0x8, code)]
    sock.close()
    assert new_events_after_disconnect(before) == [
        {"event": "connect", "type": "websocket.connect"},
        {"event": "websocket.receive", "text": "ok"},
        {"event": "websocket.disconnect", "code": code, "reason": ""},
    ]


def test_protocol_error_after_the_apps_close_sends_no_second_close(server):
    """The app closed first; the peer's answer is a frame wslay cannot
    parse: our close frame is out already, so none follows it."""
    sock = raw_handshake(server.port, "/close")
    opcode, payload = read_frame(sock)
    assert (opcode, close_code(payload)) == (0x8, 4001)
    sock.sendall(frame(0x9, b"p" * 126))
    assert frames_until_eof(sock) == []
    sock.close()


def test_invalid_utf8_after_valid_frames_in_one_write_closes_1007(server):
    sock = raw_handshake(server.port, "/echo")
    sock.sendall(frame(0x1, b"good") + frame(0x1, b"\xc3\x28 bad") + frame(0x1, b"never"))
    got = [read_frame(sock)]
    while got[-1][0] != 0x8:
        got.append(read_frame(sock))
    # The close goes out at once; the echo of "good" may or may not precede it.
    assert got[:-1] in ([], [(0x1, b"good")])
    assert close_code(got[-1][1]) == 1007
    sock.close()


def test_server_futures_follow_a_create_future_patched_mid_connection(server):
    ws = websocket.create_connection(server.ws_url("/patch-create-future"))
    ws.send("one")
    assert ws.recv() == "patched"
    ws.send("two")
    assert ws.recv() == "calls 1"
    ws.close()


def test_server_futures_follow_a_create_future_set_on_the_loop_instance(server):
    ws = websocket.create_connection(server.ws_url("/instance-create-future"))
    ws.send("one")
    assert ws.recv() == "patched"
    ws.send("two")
    assert ws.recv() == "calls 1"
    ws.close()


def test_receive_futures_the_app_keeps_are_not_reused(server):
    ws = websocket.create_connection(server.ws_url("/kept-futures"))
    for n in range(1, 9):
        ws.send(f"m{n}")
        assert ws.recv() == f"ack {n}"
    assert json.loads(ws.recv()) == []
    ws.close()


def test_receive_awaitables_the_app_keeps_are_not_handed_out_again(server):
    ws = websocket.create_connection(server.ws_url("/kept-receives"))
    for text in ("one", "two", "three"):
        ws.send(text)
    assert json.loads(ws.recv()) == ["one", False, "two", None, "three"]
    ws.close()


def test_stop_iterations_of_hand_driven_receives_stay_the_apps(server):
    ws = websocket.create_connection(server.ws_url("/hand-driven"))
    for text in ("a", "b", "c"):
        ws.send(text)
    assert json.loads(ws.recv()) == [[["a", "a"], ["b", "b"], ["c", "c"]], 3]
    ws.close()


def test_client_ping_gets_pong(server):
    sock = raw_handshake(server.port, "/echo")
    sock.sendall(frame(0x9, b"are you there"))
    assert read_frame(sock) == (0xA, b"are you there")
    sock.close()


def test_websockets_library_round_trip(server):
    async def main() -> None:
        async with websockets.connect(server.ws_url("/echo")) as ws:
            for i in range(50):
                await ws.send(f"msg {i}")
                assert await ws.recv() == f"msg {i}"
            await ws.send(b"\x01" * 60000)
            assert await ws.recv() == b"\x01" * 60000

    asyncio.run(main())


# ---- handshake -----------------------------------------------------------

def test_scope_subprotocol_and_accept_headers(server):
    ws = websocket.create_connection(
        server.ws_url("/scope?room=1"), subprotocols=["chat.v1", "chat.v2"]
    )
    assert ws.getsubprotocol() == "chat.v2"
    assert ws.getheaders()["x-extra"] == "yes"
    scope = json.loads(ws.recv())
    ws.close()
    assert scope["type"] == "websocket"
    assert scope["scheme"] == "ws"
    assert scope["subprotocols"] == ["chat.v1", "chat.v2"]
    assert scope["has_method"] is False
    assert scope["path"] == "/scope"
    assert scope["raw_path"] == "/scope"
    assert scope["query_string"] == "room=1"
    assert scope["http_version"] == "1.1"
    assert scope["client"][0] == "127.0.0.1"
    assert scope["server"] == ["127.0.0.1", server.port]
    assert scope["extensions"] == {"websocket.http.response": {}, "cdaphne.pubsub": {}}


def test_close_before_accept_is_403(server):
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(server.ws_url("/reject"))
    assert info.value.status_code == 403


WS_HEADERS = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


def test_http_response_extension_denies_with_custom_response(server):
    # httpx reads the streamed (chunked) denial body; websocket-client won't.
    response = httpx.get(server.url("/deny"), headers=WS_HEADERS)
    assert response.status_code == 401
    assert response.content == b"no entry"
    assert response.headers["x-why"] == "token"


def test_send_before_accept_raises_in_app(server):
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(server.ws_url("/send-before-accept"))
    errors = wait_events(server, "send-error")
    assert errors and "before websocket.accept" in errors[0]["text"]


def test_send_with_both_bytes_and_text_sends_the_bytes(server):
    # ASGI says exactly one is not None; uvicorn and Hypercorn send the
    # bytes, Daphne raises when both are non-empty.  Kept, documented.
    ws = websocket.create_connection(server.ws_url("/send-both"))
    try:
        assert ws.recv_data() == (websocket.ABNF.OPCODE_BINARY, b"the bytes")
        assert ws.recv_data() == (websocket.ABNF.OPCODE_BINARY, b"")
        assert ws.recv_data() == (websocket.ABNF.OPCODE_TEXT, b"only text")
    finally:
        ws.close()


def test_bad_version_is_426_and_server_still_serves(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 8\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 426")
    ws = websocket.create_connection(server.ws_url("/echo"))
    ws.send("still here")
    assert ws.recv() == "still here"
    ws.close()


@pytest.mark.parametrize("version", [b"8", b"14", b"13, 8", None])
def test_refused_version_is_answered_with_the_version_we_speak(server, version):
    # Regression: the 426 named no version.  RFC 6455 4.4: a server that
    # does not speak the client's version answers with the
    # Sec-WebSocket-Version it understands (a client may retry with it).
    field = b"" if version is None else b"Sec-WebSocket-Version: " + version + b"\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" + field + b"\r\n")
        r = Reader(sock).response()
    assert r.status == 426
    assert r.header_all("sec-websocket-version") == ["13"]
    assert r.header("connection") == "close"


KEY = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="
V13 = b"Sec-WebSocket-Version: 13"


@pytest.mark.parametrize(
    "fields",
    [
        [KEY, b"Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==", V13],
        [KEY, KEY, V13],
        [KEY, V13, V13],
        [KEY, b"Sec-WebSocket-Version: 8", V13],
        [V13],
    ],
    ids=["two_keys", "same_key_twice", "version_twice", "versions_8_13", "no_key"],
)
def test_handshake_with_two_keys_or_versions_is_400_as_with_none(server, fields):
    # Regression: the last key or version was used.  RFC 6455 4.2.1,
    # 11.3.1, 11.3.5: exactly one of each in a request.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\n" + b"".join(f + b"\r\n" for f in fields)
                     + b"\r\n")
        r = Reader(sock).response()
        assert r.status == 400
        assert r.header("connection") == "close"
        assert is_closed(sock)
    ws = websocket.create_connection(server.ws_url("/echo"))
    ws.send("still here")
    assert ws.recv() == "still here"
    ws.close()


def test_app_crash_before_accept_is_500(server):
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(server.ws_url("/crash-before-accept"))
    assert info.value.status_code == 500
    assert server.wait_log("boom before accept")


# ---- closing -------------------------------------------------------------

def test_server_close_sends_code_and_reason(server):
    sock = raw_handshake(server.port, "/close")
    opcode, payload = read_frame(sock)
    assert opcode == 0x8
    assert close_code(payload) == 4001
    assert payload[2:] == b"bye now"
    sock.sendall(frame(0x8, payload[:2]))
    sock.close()


def test_client_close_code_and_reason_reach_app(server):
    before = len([e for e in events(server) if e["event"] == "websocket.disconnect"])
    sock = raw_handshake(server.port, "/record")
    sock.sendall(frame(0x8, struct.pack("!H", 4002) + "ciao 👋".encode()))
    assert close_code(read_frame(sock)[1]) == 4002
    sock.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        got = [e for e in events(server) if e["event"] == "websocket.disconnect"]
        if len(got) > before:
            break
        time.sleep(0.05)
    assert got[before:] == [{"event": "websocket.disconnect", "code": 4002, "reason": "ciao 👋"}]


@pytest.mark.parametrize(
    ("how", "code"),
    [("close-without-code", 1005), ("drop", 1006)],
)
def test_disconnect_code_delivered_exactly_once(server, how, code):
    marker = f"/record?{how}"
    sock = raw_handshake(server.port, marker)
    before = len(events(server))
    if how == "drop":
        sock.close()
    else:
        sock.sendall(frame(0x8, b""))
        assert read_frame(sock)[0] == 0x8
        sock.close()
    time.sleep(0.3)
    new = [e for e in events(server)[before:] if e["event"] == "websocket.disconnect"]
    assert new == [{"event": "websocket.disconnect", "code": code, "reason": ""}]


def test_disconnect_delivered_after_server_side_close(server):
    before = len(events(server))
    sock = raw_handshake(server.port, "/close")
    assert read_frame(sock)[0] == 0x8
    sock.sendall(frame(0x8, struct.pack("!H", 4001)))
    sock.close()
    time.sleep(0.3)
    new = [e for e in events(server)[before:] if e["event"] == "websocket.disconnect"]
    assert len(new) == 1


def test_app_exception_after_accept_closes_1011(server):
    sock = raw_handshake(server.port, "/crash")
    opcode, payload = read_frame(sock)
    assert (opcode, close_code(payload)) == (0x8, 1011)
    sock.close()
    assert server.wait_log("boom after accept")


def test_app_returning_closes_1000(server):
    sock = raw_handshake(server.port, "/return")
    opcode, payload = read_frame(sock)
    assert (opcode, close_code(payload)) == (0x8, 1000)
    sock.close()


# ---- protocol errors and limits --------------------------------------------

def test_invalid_utf8_closes_1007(server):
    sock = raw_handshake(server.port, "/echo")
    sock.sendall(frame(0x1, b"\xff\xfe bad"))
    opcode, payload = read_frame(sock)
    assert (opcode, close_code(payload)) == (0x8, 1007)
    sock.close()


def test_unmasked_client_frame_closes_1002(server):
    sock = raw_handshake(server.port, "/echo")
    sock.sendall(frame(0x1, b"naked", masked=False))
    opcode, payload = read_frame(sock)
    assert (opcode, close_code(payload)) == (0x8, 1002)
    sock.close()


def test_message_over_limit_closes_1009(server):
    sock = raw_handshake(server.port, "/echo")
    sock.sendall(frame(0x2, b"x" * 70000))
    opcode, payload = read_frame(sock)
    assert (opcode, close_code(payload)) == (0x8, 1009)
    sock.close()


def test_fragments_over_limit_close_1009(server):
    sock = raw_handshake(server.port, "/echo")
    for _ in range(3):
        sock.sendall(frame(0x2 if _ == 0 else 0x0, b"y" * 30000, fin=False))
    opcode, payload = read_frame(sock)
    assert (opcode, close_code(payload)) == (0x8, 1009)
    sock.close()


# ---- backpressure ----------------------------------------------------------


def release(server: ServerProcess) -> None:
    """Lets the /hold app go on (it registers itself once connected)."""
    deadline = time.monotonic() + 5
    while not httpx.get(server.url("/release")).json()["released"]:
        assert time.monotonic() < deadline, "the /hold app never started"
        time.sleep(0.02)


def hold_handshake(port: int, path: str, early: bytes) -> socket.socket:
    """A handshake with `early` bytes sent right behind it (before the 101)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode() + early
    )
    return sock


@pytest.mark.parametrize("path", ["/hold", "/hold-accept"])
@pytest.mark.parametrize(
    ("count", "size", "parsed"),
    # 64 messages, or 64 KiB of payload (the bound at this server's 64 KiB
    # message limit), stop the parsing: a ping behind them waits.
    [(63, 0, True), (64, 0, False), (3, 16384, True), (4, 16384, False)],
)
def test_queue_bound_stops_parsing_at_the_exact_frame(server, path, count, size, parsed):
    """An app that does not receive: frames are parsed up to the bound and
    no further (a ping behind them is answered only if it is within it),
    even when they all came in one read, or before the 101; once the app
    receives, everything is delivered in order."""
    messages = [bytes([i]) * size for i in range(count)]
    data = b"".join(frame(0x2, m) for m in messages) + frame(0x9, b"behind")
    if path == "/hold":
        sock = raw_handshake(server.port, path)
        sock.sendall(data)
    else:
        sock = hold_handshake(server.port, path, data)
    got = []
    if path == "/hold" and parsed:
        got.append(read_frame(sock))
        assert got == [(0xA, b"behind")]
    else:
        assert not readable(sock, 1.0)
    release(server)
    if path == "/hold-accept":
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
    got += [read_frame(sock) for _ in range(count + 1 - len(got))]
    assert [f for f in got if f[0] == 0x2] == [(0x2, m) for m in messages]
    assert [f for f in got if f[0] == 0xA] == [(0xA, b"behind")]
    if not parsed:
        assert got.index((0xA, b"behind")) > 0  # Only once the app received.
    sock.close()



def test_send_waits_for_a_slow_reader(server):
    sock = raw_handshake(server.port, "/flood")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    time.sleep(1.0)
    sent_while_stalled = httpx.get(server.url("/sent")).json()["bytes"]
    assert sent_while_stalled < 32 * 1024 * 1024
    total = 0
    while True:
        opcode, payload = read_frame(sock)
        if opcode == 0x8:
            break
        total += len(payload)
    assert total == 3200 * 65536
    sock.close()


def test_client_leaving_while_reading_is_paused_reaches_the_app():
    # The app stops receiving, so the server stops reading (queued bytes
    # reach the bound); the client's FIN waits behind unread data.  The
    # server must still see it: the disconnect arms the close timeout,
    # and the app's next receive() calls end in websocket.disconnect.
    flags = ("--ping-interval", "0", "--websocket-max-message-size", "65536",
             "--application-close-timeout", "0.5")
    with running(APP, *flags) as s:
        sock = raw_handshake(s.port, "/stall")
        sock.settimeout(10)
        # Twice the bound: the rest and the FIN fit the kernel's buffer.
        for _ in range(8):
            sock.sendall(frame(0x2, b"z" * 16384))
        sock.close()
        found = wait_events(s, "websocket.disconnect", timeout=10)
        assert found == [{"event": "websocket.disconnect", "code": 1006}]
        assert [e["event"] for e in events(s)].count("stall-cancelled") == 1


# ---- timers (own servers: they need other flags) --------------------------

def test_server_pings_and_drops_a_silent_peer():
    with running(APP, "--ping-interval", "0.2", "--ping-timeout", "0.3") as s:
        sock = raw_handshake(s.port, "/record")
        opcode, _ = read_frame(sock)
        assert opcode == 0x9
        start = time.monotonic()
        sock.settimeout(5)
        with pytest.raises(ConnectionError):
            while True:  # We never answer: the server must hang up.
                read_frame(sock)
        assert time.monotonic() - start < 3
        sock.close()
        found = wait_events(s, "websocket.disconnect")
        assert found and found[0]["code"] == 1006


def test_pongs_keep_a_connection_open():
    with running(APP, "--ping-interval", "0.2", "--ping-timeout", "0.3") as s:
        sock = raw_handshake(s.port, "/echo")
        deadline = time.monotonic() + 1.5
        pings = 0
        while time.monotonic() < deadline:
            opcode, payload = read_frame(sock)
            assert opcode == 0x9
            pings += 1
            sock.sendall(frame(0xA, payload))
        sock.sendall(frame(0x1, b"alive"))
        while True:
            opcode, payload = read_frame(sock)
            if opcode == 0x1:
                break
        assert payload == b"alive"
        assert pings >= 3
        sock.close()


def test_websocket_connect_timeout_rejects_slow_apps():
    with running(APP, "--websocket_connect_timeout", "0.3") as s:
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            websocket.create_connection(s.ws_url("/never-accept"), timeout=5)
        assert info.value.status_code == 403


def test_websocket_timeout_closes_old_connections():
    with running(APP, "--websocket_timeout", "0.5", "--ping-interval", "0.1") as s:
        sock = raw_handshake(s.port, "/echo")
        start = time.monotonic()
        while True:
            opcode, payload = read_frame(sock)
            if opcode == 0x9:
                sock.sendall(frame(0xA, payload))
                continue
            break
        assert (opcode, close_code(payload)) == (0x8, 1000)
        assert time.monotonic() - start < 3
        sock.close()


def test_shutdown_closes_open_sockets_with_1012():
    server = start_server(APP, "--timeout-graceful-shutdown", "0.5")
    try:
        sock = raw_handshake(server.port, "/record")
        server.proc.send_signal(signal.SIGTERM)
        opcode, payload = read_frame(sock)
        assert (opcode, close_code(payload)) == (0x8, 1012)
        sock.close()
        assert server.wait(10) == 0
    finally:
        if server.proc.poll() is None:
            server.stop()


def test_shutdown_tells_an_idle_websocket_and_its_app_at_once():
    # uvicorn's shutdown: close 1012 to the client and websocket.disconnect
    # 1012 to the app when the stop begins.  Both waited for the graceful
    # timeout before (the app then heard 1006), so a quiet Channels
    # consumer held every restart for it.
    server = start_server(APP, "--timeout-graceful-shutdown", "60")
    try:
        with websockets.sync.client.connect(server.ws_url("/say-disconnect")) as client:
            server.proc.send_signal(signal.SIGTERM)
            with pytest.raises(websockets.ConnectionClosed) as info:
                client.recv(timeout=30)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1012
        assert server.wait(30) == 0
        heard = [line for line in server.log.splitlines() if "app heard" in line]
        assert heard == ['app heard {"code": 1012, "reason": "", "type": "websocket.disconnect"}']
    finally:
        if server.proc.poll() is None:
            server.stop()


def test_shutdown_refuses_a_handshake_the_app_has_not_answered():
    # uvicorn answers such a handshake 500 when its stop begins and its app
    # hears websocket.disconnect 1006 (Daphne drops the connection).  It
    # was left to the app until the graceful timeout, which held the stop.
    server = start_server(APP, "--timeout-graceful-shutdown", "60")
    try:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        sock.sendall(
            b"GET /answer-late HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        server.wait_log("app waits")
        server.proc.send_signal(signal.SIGTERM)
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
        sock.close()
        assert reply.startswith(b"HTTP/1.1 500 "), reply
        assert reply.endswith(b"\r\n\r\nInternal Server Error")
        assert server.wait(30) == 0
        heard = [line for line in server.log.splitlines() if line.startswith("app ")]
        assert heard == [
            "app waits",
            'app heard {"code": 1006, "reason": "", "type": "websocket.disconnect"}',
            "app accept returned",
        ]
    finally:
        if server.proc.poll() is None:
            server.stop()


def test_idle_connections_cost_no_cpu():
    psutil = pytest.importorskip("psutil")
    with running(APP) as s:
        socks = [raw_handshake(s.port, "/echo") for _ in range(1000)]
        proc = psutil.Process(s.proc.pid)
        before = sum(proc.cpu_times()[:2])
        time.sleep(2)
        used = sum(proc.cpu_times()[:2]) - before
        for sock in socks:
            sock.close()
        assert used < 0.2, f"1000 idle WebSockets used {used:.2f}s of CPU in 2s"


def test_fin_on_a_websocket_is_a_disconnect_1006(server):
    # Unlike an HTTP request's half-close, a FIN on a WebSocket ends it.
    sock = raw_handshake(server.port, "/record?halfclose")
    before = len(events(server))
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(5)
    try:
        assert sock.recv(65536) == b""
    except ConnectionResetError:
        pass
    sock.close()
    time.sleep(0.3)
    new = [e for e in events(server)[before:] if e["event"] == "websocket.disconnect"]
    assert new == [{"event": "websocket.disconnect", "code": 1006, "reason": ""}]
