"""Red team, session 8: permessage-deflate against a hostile peer, on
the wire by hand (helpers from tests/test_deflate.py)."""

from __future__ import annotations

import base64
import os
import socket
import time
import zlib

import httpx
import pytest

from .serverproc import start_server
from .test_deflate import TAIL, close_code, compress, frame, handshake, read_frame

APP = "tests.apps.red8_ws:app"


@pytest.fixture
def server(serve):
    return serve(APP, "--ping-interval", "0")


def finished(data: bytes, bits: int = 15) -> bytes:
    """data as one raw deflate stream ending in a BFINAL block (RFC 7692
    7.2.3.4 lets a sender flush this way)."""
    c = zlib.compressobj(6, zlib.DEFLATED, -bits)
    return c.compress(data) + c.flush(zlib.Z_FINISH)


def test_messages_ending_in_a_bfinal_block_are_read_and_the_next_ones_too(server):
    sock, _ = handshake(server.port, "permessage-deflate")
    inflate = zlib.decompressobj(-15)
    for i in range(4):
        message = f"message {i} that ends its deflate stream ".encode() * 5
        sock.sendall(frame(0x1, finished(message), rsv1=True))
        opcode, rsv1, payload = read_frame(sock)
        assert (opcode, rsv1) == (0x1, True)
        assert inflate.decompress(payload + TAIL) == message
    # A plain sync-flushed message after them (a new stream).
    sock.sendall(frame(0x1, compress(b"and a plain one"), rsv1=True))
    assert inflate.decompress(read_frame(sock)[2] + TAIL) == b"and a plain one"
    sock.close()


@pytest.mark.parametrize(
    "first, opcode, payload",
    [
        (0x40, 0x8, b"\x03\xe8"),  # RSV1 on a close frame
        (0x40, 0xA, b"pong"),  # RSV1 on an unsolicited pong
        (0x20, 0x1, b"x"),  # RSV2
        (0x10, 0x2, b"x"),  # RSV3
        (0x60, 0x1, b"x"),  # RSV1 and RSV2
    ],
)
def test_reserved_bits_not_negotiated_close_1002(server, first, opcode, payload):
    sock, _ = handshake(server.port, "permessage-deflate")
    raw = bytearray(frame(opcode, payload))
    raw[0] |= first
    sock.sendall(bytes(raw))
    assert close_code(sock) == 1002
    sock.close()


def test_a_compressed_message_in_500_fragments(server):
    sock, _ = handshake(server.port, "permessage-deflate")
    message = bytes(range(256)) * 40 + b"tail"
    data = compress(message)
    step = max(1, len(data) // 500)
    parts = [data[i : i + step] for i in range(0, len(data), step)]
    out = [frame(0x2, parts[0], fin=False, rsv1=True)]
    out += [frame(0x0, p, fin=False) for p in parts[1:-1]]
    out.append(frame(0x0, parts[-1]))
    sock.sendall(b"".join(out))
    opcode, rsv1, payload = read_frame(sock)
    assert (opcode, rsv1) == (0x2, True)
    assert zlib.decompressobj(-15).decompress(payload + TAIL) == message
    sock.close()


def test_a_bomb_spread_over_fragments_closes_1009():
    """Each fragment inflates to little; the message as a whole past the
    limit closes 1009."""
    proc = start_server(APP, "--ping-interval", "0", "--websocket-max-message-size", "100000")
    try:
        sock, _ = handshake(proc.port, "permessage-deflate")
        data = compress(bytes(1 << 20))  # 1 MiB of zeros: ~1 KiB on the wire
        parts = [data[i : i + 64] for i in range(0, len(data), 64)]
        out = [frame(0x2, parts[0], fin=False, rsv1=True)]
        out += [frame(0x0, p, fin=False) for p in parts[1:-1]]
        out.append(frame(0x0, parts[-1]))
        sock.sendall(b"".join(out))
        assert close_code(sock) == 1009
        sock.close()
    finally:
        assert proc.stop() == 0, proc.log_tail()


def test_compressing_for_a_peer_that_never_reads_waits_for_it(server):
    """Incompressible messages to a peer that reads nothing: send() waits
    (the bound holds for compressed output too), then all of it arrives."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /flood HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert b"permessage-deflate" in head
    time.sleep(1.0)
    stalled = httpx.get(server.url("/sent"), timeout=10).json()["bytes"]
    assert stalled < 32 * 1024 * 1024
    total = 0
    inflate = zlib.decompressobj(-15)
    sock.settimeout(30)
    while True:
        opcode, rsv1, payload = read_frame(sock)
        if opcode == 0x8:
            break
        total += len(inflate.decompress(payload + TAIL) if rsv1 else payload)
    assert total == 3200 * 65536
    sock.close()
