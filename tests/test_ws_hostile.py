"""Hostile WebSocket clients against bounded memory, over raw sockets."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from .conftest import recv_all
from .test_websocket import frame, raw_handshake, read_frame, wait_events

APP = "tests.apps.wsbehaviour:app"


def send_until_stalled(sock: socket.socket, data: bytes, limit: int) -> int:
    """Sends data over and over until the peer stops taking it for 1 s,
    closes, or `limit` bytes went; returns the bytes sent."""
    sock.setblocking(False)
    sent = 0
    view = memoryview(data)
    pos = 0
    stalled_since = None
    while sent < limit:
        try:
            n = sock.send(view[pos:])
        except BlockingIOError:
            n = 0
        except (BrokenPipeError, ConnectionResetError):
            break  # The server closed.
        if n == 0:
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > 1.0:
                break
            time.sleep(0.01)
            continue
        stalled_since = None
        sent += n
        pos = (pos + n) % len(data)
    sock.setblocking(True)
    return sent


def test_ping_flood_from_a_peer_that_never_reads_stops_reading(serve):
    # Each ping queues a pong: with a peer that reads nothing the pongs
    # piled up without bound (800 MB of server memory in 4 s).  Above
    # --write-buffer-size the server stops reading, as send() waits there.
    proc = serve(APP, "--ping-interval", "0", "--write-buffer-size", "65536")
    sock = raw_handshake(proc.port, "/")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 262144)
    ping = frame(0x9, b"p" * 125)
    sent = send_until_stalled(sock, ping * 512, limit=64 << 20)
    assert sent < 32 << 20, "the server read on while its pongs piled up"
    # Once the peer reads, every pong comes, and the server reads again.
    got: list[tuple[int, bytes]] = []

    def reader() -> None:
        sock.settimeout(10)
        while True:
            opcode, payload = read_frame(sock)
            got.append((opcode, payload))
            if opcode == 0x1:
                return

    t = threading.Thread(target=reader)
    t.start()
    sock.sendall(ping[sent % len(ping) :] if sent % len(ping) else b"")
    pings = -(-sent // len(ping))
    sock.sendall(frame(0x1, b"after the flood"))
    t.join(30)
    assert not t.is_alive()
    assert got[-1] == (0x1, b"after the flood")
    assert got[:-1] == [(0xA, b"p" * 125)] * pings
    sock.close()


def test_ping_flooding_peer_that_never_reads_is_dropped_by_the_ping_timeout(serve):
    # Reading stopped for it, so its pings no longer show it alive: it
    # reads nothing of ours, not even our ping, and the ping timeout ends it.
    proc = serve(APP, "--ping-interval", "0.3", "--ping-timeout", "0.5",
                 "--write-buffer-size", "65536")
    sock = raw_handshake(proc.port, "/")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 262144)
    send_until_stalled(sock, frame(0x9, b"p" * 125) * 512, limit=64 << 20)
    # Still reading nothing: the server gives up on it by itself.
    found = wait_events(proc, "websocket.disconnect", timeout=10)
    assert [e["code"] for e in found] == [1006]
    sock.close()


def handshake_reply(port: int, path: str) -> bytes:
    """The server's whole answer to a WebSocket handshake it refuses."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    return recv_all(sock)


@pytest.mark.parametrize(
    "path", ["/deny-bad-status", "/deny-bad-header", "/deny-no-body", "/accept-bad-header"]
)
def test_denial_that_never_wrote_a_head_gets_500(serve, path):
    # A websocket.http.response.start that send() refused, or one the app
    # never followed with a body: nothing went out, so the client gets a
    # 500 as for an HTTP request, not a bare close.
    proc = serve("tests.apps.wshostile:app")
    raw = handshake_reply(proc.port, path)
    assert raw.startswith(b"HTTP/1.1 500 Internal Server Error\r\n"), raw
    assert raw.endswith(b"\r\n\r\nInternal Server Error")


def test_denial_that_raised_mid_body_sends_what_it_wrote(serve):
    proc = serve("tests.apps.wshostile:app")
    raw = handshake_reply(proc.port, "/deny-then-raise")
    assert raw.startswith(b"HTTP/1.1 403 Forbidden\r\n"), raw
    # The body is cut short: no last chunk tells the client it is whole.
    assert raw.endswith(b"\r\n\r\n2\r\nno\r\n")


def test_websocket_receive_and_send_kept_past_the_close_are_harmless(serve):
    proc = serve("tests.apps.wshostile:app")
    sock = raw_handshake(proc.port, "/keep")
    sock.sendall(frame(0x8, b"\x03\xe8"))
    assert read_frame(sock) == (0x8, b"\x03\xe8")
    sock.close()
    with socket.create_connection(("127.0.0.1", proc.port), timeout=5) as http:
        http.sendall(b"GET /late HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = recv_all(http)
    # The disconnect was delivered once (the app's loop took it): a later
    # receive() waits; sends after the close are dropped, as Daphne does.
    assert raw.endswith(b"\r\n\r\nTimeoutError\nNone\nNone"), raw


def fragmented(n: int, piece: bytes) -> bytes:
    """One text message in n fragments of `piece` each."""
    return (frame(0x1, piece, fin=False) + frame(0x0, piece, fin=False) * (n - 2)
            + frame(0x0, piece))


def test_message_in_tiny_fragments_counts_their_overhead(serve):
    # wslay keeps each frame's payload in a heap chunk of its own (~95
    # bytes for 1 byte of payload): 1-byte fragments made a 1 MiB message
    # cost 100 MB of server memory.  Each frame now counts 64 bytes toward
    # the message limit as well: 2000 1-byte fragments pass 64 KiB.
    proc = serve(APP, "--ping-interval", "0", "--websocket-max-message-size", "65536")
    sock = raw_handshake(proc.port, "/")
    sock.sendall(fragmented(2000, b"a"))
    opcode, payload = read_frame(sock)
    assert (opcode, payload[:2]) == (0x8, b"\x03\xf1"), (opcode, payload[:20])  # 1009
    sock.close()


def test_message_in_a_few_hundred_fragments_is_delivered(serve):
    proc = serve(APP, "--ping-interval", "0", "--websocket-max-message-size", "65536")
    sock = raw_handshake(proc.port, "/")
    sock.sendall(fragmented(400, b"b" * 100))  # 40 000 bytes + 400 x 64
    assert read_frame(sock) == (0x1, b"b" * 40000)
    sock.close()


def test_two_tasks_in_receive_at_once_lose_no_message(serve):
    proc = serve("tests.apps.wshostile:app")
    sock = raw_handshake(proc.port, "/two-receivers")
    texts = [str(i) for i in range(50)]
    for i, t in enumerate(texts):
        sock.sendall(frame(0x1, t.encode()))
        if i % 7 == 0:
            time.sleep(0.01)
    sock.sendall(frame(0x1, b"end"))
    opcode, payload = read_frame(sock)
    assert opcode == 0x1
    assert sorted(payload.decode().split(",")) == sorted([*texts, "end"])
    sock.close()


def test_http10_websocket_handshake_gets_505(serve):
    # RFC 6455 4.1 asks for HTTP/1.1; Daphne (autobahn) answers 505.
    proc = serve(APP)
    sock = socket.create_connection(("127.0.0.1", proc.port), timeout=5)
    sock.sendall(
        b"GET / HTTP/1.0\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    raw = recv_all(sock)
    assert raw.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n"), raw
