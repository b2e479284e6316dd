"""permessage-deflate (RFC 7692): negotiation, compressed echo, limits on
the inflated size, bad frames; with the `websockets` client (it offers
permessage-deflate by default) and a raw socket speaking zlib itself."""

from __future__ import annotations

import base64
import os
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import pytest
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.sync.client import connect

from .serverproc import ServerProcess, start_server
from .test_tls import client_ctx, pki, tls_flags  # noqa: F401 - pki is a fixture

ECHO = "tests.apps.ws:echo"
TAIL = b"\x00\x00\xff\xff"


@contextmanager
def running(*flags: str) -> Iterator[ServerProcess]:
    proc = start_server(ECHO, "--ping-interval", "0", *flags)
    try:
        yield proc
    finally:
        code = proc.stop()
    assert code == 0, proc.log_tail()


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running() as proc:
        yield proc


# ---- a raw client -----------------------------------------------------------


def handshake(port: int, extensions: str | None) -> tuple[socket.socket, dict[str, str]]:
    """Opens a WebSocket offering `extensions`; returns the socket and the
    101 response's headers (lower-case names)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    ext = f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions is not None else ""
    sock.sendall(
        f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, "closed during handshake"
        head += chunk
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 101"), head
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            assert name.lower() not in headers, f"{name} twice"
            headers[name.lower()] = value.strip()
    return sock, headers


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes([first, 0x80 | n])
    elif n < 65536:
        head = bytes([first, 0x80 | 126]) + struct.pack("!H", n)
    else:
        head = bytes([first, 0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return head + mask + masked


def read_frame(sock: socket.socket) -> tuple[int, bool, bytes]:
    """(opcode, rsv1, payload) of the next frame (the server sends whole
    messages, FIN set)."""

    def exact(n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return bytes(data)

    b0, b1 = exact(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", exact(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", exact(8))[0]
    assert b0 & 0x80, "a fragment"
    return b0 & 0x0F, bool(b0 & 0x40), exact(n)


def close_code(sock: socket.socket) -> int:
    """The code of the close frame that must come next (data frames skipped)."""
    while True:
        opcode, _, payload = read_frame(sock)
        if opcode == 0x8:
            return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


def compress(data: bytes, bits: int = 15, obj=None) -> bytes:
    c = obj or zlib.compressobj(6, zlib.DEFLATED, -bits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(TAIL)
    return out[:-4]


def params(header: str) -> list[str]:
    parts = [p.strip() for p in header.split(";")]
    assert parts[0] == "permessage-deflate", header
    return sorted(parts[1:])


# ---- the websockets client ----------------------------------------------


def test_websockets_client_negotiates_and_echoes_text_and_binary(server):
    with connect(server.ws_url("/")) as ws:
        assert ws.response.headers["Sec-WebSocket-Extensions"].startswith("permessage-deflate")
        for message in ["hi", "héllo wörld " * 50, b"\x00\xff" * 3000, b"", ""]:
            ws.send(message)
            assert ws.recv() == message


def test_compressed_messages_after_a_quiet_spell(server):
    # A quiet second parks the wslay context (websocket.c ws_park); the
    # context made for the next read must accept RSV1 again.
    with connect(server.ws_url("/")) as ws:
        for _ in range(2):
            ws.send("before the pause " * 20)
            assert ws.recv() == "before the pause " * 20
            time.sleep(1.3)
            ws.send("after the pause " * 20)
            assert ws.recv() == "after the pause " * 20


def test_compressed_messages_over_tls(pki):  # noqa: F811 - the fixture
    with running(*tls_flags(pki)) as proc:
        with connect(f"wss://localhost:{proc.port}/", ssl=client_ctx(pki), max_size=None) as ws:
            assert ws.response.headers["Sec-WebSocket-Extensions"].startswith("permessage-deflate")
            for message in ["over tls " * 1000, os.urandom(300_000), "x"]:
                ws.send(message)
                assert ws.recv() == message


def test_big_messages_near_the_limit_round_trip():
    limit = 1 << 20
    with running("--websocket-max-message-size", str(limit)) as proc:
        with connect(proc.ws_url("/"), max_size=None) as ws:
            text = ("lorem ipsum dolor sit amet " * 40000)[:limit]
            ws.send(text)
            assert ws.recv() == text
            # Incompressible: larger on the wire than the limit, still allowed.
            noise = os.urandom(limit)
            ws.send(noise)
            assert ws.recv() == noise


def test_fragmented_compressed_message_from_websockets(server):
    with connect(server.ws_url("/")) as ws:
        parts = [f"part {i} ".encode() * 500 for i in range(8)]
        ws.send(iter(parts))
        assert ws.recv() == b"".join(parts)


@pytest.mark.parametrize("takeover", [True, False])
def test_websockets_client_context_takeover_settings(server, takeover):
    factory = ClientPerMessageDeflateFactory(
        server_no_context_takeover=not takeover,
        client_no_context_takeover=not takeover,
        server_max_window_bits=10,
        client_max_window_bits=9,
    )
    with connect(server.ws_url("/"), extensions=[factory], compression=None) as ws:
        header = ws.response.headers["Sec-WebSocket-Extensions"]
        expected = ["client_max_window_bits=9", "server_max_window_bits=10"]
        if not takeover:
            expected += ["client_no_context_takeover", "server_no_context_takeover"]
        assert params(header) == sorted(expected)
        for i in range(20):
            message = f"message {i % 3} " * (10 + i)
            ws.send(message)
            assert ws.recv() == message


def test_deflate_off_by_flag_sends_no_extension():
    with running("--ws-per-message-deflate", "false") as proc:
        with connect(proc.ws_url("/")) as ws:
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            ws.send("plain " * 100)
            assert ws.recv() == "plain " * 100
        sock, headers = handshake(proc.port, "permessage-deflate")
        assert "sec-websocket-extensions" not in headers
        sock.sendall(frame(0x1, compress(b"x" * 100), rsv1=True))
        assert close_code(sock) == 1002
        sock.close()


def test_flag_spellings():
    from cdaphne.cli import config_from_args

    assert config_from_args([ECHO]).ws_per_message_deflate is True
    for text, value in (("true", True), ("False", False), ("0", False), ("on", True)):
        cfg = config_from_args([ECHO, "--ws-per-message-deflate", text])
        assert cfg.ws_per_message_deflate is value
    with pytest.raises(SystemExit):
        config_from_args([ECHO, "--ws-per-message-deflate", "maybe"])


@pytest.mark.parametrize("flag, value", [
    ("--ws-deflate-window-bits", "8"),
    ("--ws-deflate-window-bits", "16"),
    ("--ws-deflate-mem-level", "0"),
    ("--ws-deflate-mem-level", "10"),
])
def test_deflate_bounds_out_of_zlib_range_are_refused(flag, value):
    from cdaphne.cli import config_from_args
    from cdaphne.config import ConfigError

    with pytest.raises(ConfigError, match=flag[2:].replace("-", "_")):
        config_from_args([ECHO, flag, value]).validate()


# ---- negotiation ----------------------------------------------------------


@pytest.mark.parametrize(
    "offer, expected",
    [
        # The default answer: our window (12 bits) is said unasked.
        ("permessage-deflate", ["server_max_window_bits=12"]),
        (
            "permessage-deflate; client_max_window_bits",
            ["client_max_window_bits=12", "server_max_window_bits=12"],
        ),
        (
            "permessage-deflate; client_max_window_bits=10",
            ["client_max_window_bits=10", "server_max_window_bits=12"],
        ),
        (
            'permessage-deflate; client_max_window_bits="9"',
            ["client_max_window_bits=9", "server_max_window_bits=12"],
        ),
        (
            "permessage-deflate; server_max_window_bits=9; server_no_context_takeover",
            ["server_max_window_bits=9", "server_no_context_takeover"],
        ),
        ("permessage-deflate; server_max_window_bits=15", ["server_max_window_bits=12"]),
        (
            "permessage-deflate;client_no_context_takeover",
            ["client_no_context_takeover", "server_max_window_bits=12"],
        ),
        # Several offers: the first acceptable one wins.
        (
            "permessage-deflate; server_max_window_bits=8, "
            "permessage-deflate; client_max_window_bits",
            ["client_max_window_bits=12", "server_max_window_bits=12"],
        ),
        (
            "x-webkit-deflate-frame, permessage-deflate; unknown=1, permessage-deflate",
            ["server_max_window_bits=12"],
        ),
    ],
)
def test_offer_accepted_with(server, offer, expected):
    sock, headers = handshake(server.port, offer)
    assert params(headers["sec-websocket-extensions"]) == sorted(expected)
    sock.close()


@pytest.mark.parametrize(
    "offer",
    [
        "x-webkit-deflate-frame",
        "permessage-deflate; foo",
        "permessage-deflate; foo=bar",
        "permessage-deflate; server_max_window_bits=8",  # zlib cannot
        "permessage-deflate; server_max_window_bits",  # needs a value
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=09",
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; client_max_window_bits=abc",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
        'permessage-deflate; client_max_window_bits="10',  # unterminated
        "permessage-deflate; ; x",
        "permessage-deflate x",
        "",
    ],
)
def test_offer_declined_but_handshake_succeeds(server, offer):
    sock, headers = handshake(server.port, offer)
    assert "sec-websocket-extensions" not in headers
    sock.sendall(frame(0x1, b"still here"))
    assert read_frame(sock) == (0x1, False, b"still here")
    sock.close()


def test_offer_in_a_second_header_field(server):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Extensions: foo; bar=1\r\n"
        f"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=11\r\n\r\n".encode()
    )
    head = sock.recv(4096)
    assert b"101" in head.split(b"\r\n")[0]
    assert (
        b"sec-websocket-extensions: permessage-deflate; server_max_window_bits=12; "
        b"client_max_window_bits=11\r\n"
    ) in head
    sock.close()


def test_app_extensions_header_gives_way_to_the_negotiated_one():
    """The server does the framing, so it alone answers the extension offer:
    an app's own Sec-WebSocket-Extensions field in websocket.accept is
    dropped (two fields made clients fail the handshake), other headers
    stay, and compression works as negotiated (or stays off)."""
    proc = start_server("tests.apps.ws:echo_app_extensions", "--ping-interval", "0")
    try:
        with connect(proc.ws_url("/")) as ws:
            assert ws.response.headers.get_all("Sec-WebSocket-Extensions") == [
                "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
            ]
            assert ws.response.headers["x-app"] == "kept"
            ws.send("compressed " * 50)
            assert ws.recv() == "compressed " * 50
        sock, headers = handshake(proc.port, "permessage-deflate")
        ext = headers["sec-websocket-extensions"]
        assert ext == "permessage-deflate; server_max_window_bits=12"
        sock.sendall(frame(0x2, compress(b"z" * 300), rsv1=True))
        opcode, rsv1, payload = read_frame(sock)
        assert (opcode, rsv1) == (0x2, True)
        assert zlib.decompressobj(-15).decompress(payload + TAIL) == b"z" * 300
        sock.close()
        sock, headers = handshake(proc.port, None)
        assert "sec-websocket-extensions" not in headers
        assert headers["x-app"] == "kept"
        sock.sendall(frame(0x2, b"plain"))
        assert read_frame(sock) == (0x2, False, b"plain")
        sock.close()
    finally:
        assert proc.stop() == 0, proc.log_tail()


# ---- the wire, by hand -------------------------------------------------------


def test_raw_compressed_echo_and_context_takeover(server):
    sock, headers = handshake(server.port, "permessage-deflate")
    inflate = zlib.decompressobj(-15)
    message = b"the same sentence, said twice over " * 4
    sizes = []
    for _ in range(2):
        sock.sendall(frame(0x2, compress(message), rsv1=True))
        opcode, rsv1, payload = read_frame(sock)
        assert (opcode, rsv1) == (0x2, True)
        assert inflate.decompress(payload + TAIL) == message
        sizes.append(len(payload))
    # The second copy refers back to the first: the server kept its context.
    assert sizes[1] < sizes[0] / 2
    sock.close()


def test_raw_server_no_context_takeover(server):
    sock, _ = handshake(server.port, "permessage-deflate; server_no_context_takeover")
    message = b"the same sentence, said twice over " * 4
    payloads = []
    for _ in range(2):
        sock.sendall(frame(0x1, compress(message), rsv1=True))
        opcode, rsv1, payload = read_frame(sock)
        assert (opcode, rsv1) == (0x1, True)
        # Each message inflates alone, with a fresh decompressor.
        assert zlib.decompressobj(-15).decompress(payload + TAIL) == message
        payloads.append(payload)
    assert payloads[0] == payloads[1]
    sock.close()


def test_raw_client_context_takeover_is_followed(server):
    """The client keeps its context across messages (it was not told to
    reset): the server's inflater must keep it too."""
    sock, _ = handshake(server.port, "permessage-deflate; client_max_window_bits")
    c = zlib.compressobj(6, zlib.DEFLATED, -12)
    for i in range(5):
        message = f"repeat {i % 2} ".encode() * 30
        sock.sendall(frame(0x1, compress(message, obj=c), rsv1=True))
        _, _, payload = read_frame(sock)
        # A fresh inflater per reply works only if the server reset per
        # message; it keeps context here, so use one for the session.
        if i == 0:
            inflate = zlib.decompressobj(-12)
        assert inflate.decompress(payload + TAIL) == message
    sock.close()


def test_raw_fragmented_compressed_message(server):
    sock, _ = handshake(server.port, "permessage-deflate")
    message = "fragments of text, ünïcode too. ".encode() * 200
    data = compress(message)
    third = len(data) // 3
    sock.sendall(frame(0x1, data[:third], fin=False, rsv1=True))
    sock.sendall(frame(0x9, b"ping between"))
    sock.sendall(frame(0x0, data[third : 2 * third], fin=False))
    sock.sendall(frame(0x0, data[2 * third :]))
    assert read_frame(sock) == (0xA, False, b"ping between")
    opcode, rsv1, payload = read_frame(sock)
    assert (opcode, rsv1) == (0x1, True)
    assert zlib.decompressobj(-15).decompress(payload + TAIL) == message
    sock.close()


def test_uncompressed_message_on_a_deflate_connection(server):
    sock, _ = handshake(server.port, "permessage-deflate")
    sock.sendall(frame(0x1, b"not compressed"))
    opcode, rsv1, payload = read_frame(sock)
    assert opcode == 0x1
    got = zlib.decompressobj(-15).decompress(payload + TAIL) if rsv1 else payload
    assert got == b"not compressed"
    sock.close()


@pytest.mark.parametrize(
    "case",
    [
        "rsv1 not negotiated",
        "rsv1 on a ping",
        "rsv1 on a continuation",
        "bad deflate data",
    ],
)
def test_bad_rsv1_or_data_closes_1002(server, case):
    offer = None if case == "rsv1 not negotiated" else "permessage-deflate"
    sock, _ = handshake(server.port, offer)
    if case == "rsv1 on a ping":
        sock.sendall(frame(0x9, b"", rsv1=True))
    elif case == "rsv1 on a continuation":
        sock.sendall(frame(0x1, compress(b"abc" * 30), fin=False, rsv1=True))
        sock.sendall(frame(0x0, b"", rsv1=True))
    elif case == "bad deflate data":
        sock.sendall(frame(0x2, b"\xff\xff\xff\xff garbage", rsv1=True))
    else:
        sock.sendall(frame(0x1, compress(b"x" * 100), rsv1=True))
    assert close_code(sock) == 1002
    sock.close()


def test_inflated_invalid_utf8_closes_1007(server):
    sock, _ = handshake(server.port, "permessage-deflate")
    sock.sendall(frame(0x1, compress(b"valid until \xff\xfe" * 10), rsv1=True))
    assert close_code(sock) == 1007
    sock.close()


def rss(proc: ServerProcess) -> int:
    return psutil.Process(proc.proc.pid).memory_info().rss


def test_compression_bomb_closes_1009_without_inflating_it():
    # 256 MiB of zeros in about 250 KiB: under the 1 MiB limit on the wire.
    bomb_size = 256 << 20
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    parts = [c.compress(chunk) for _ in range(bomb_size >> 20)]
    bomb = b"".join(parts) + c.flush(zlib.Z_SYNC_FLUSH)[:-4]
    assert len(bomb) < 1 << 20
    with running() as proc:
        sock, _ = handshake(proc.port, "permessage-deflate")
        sock.sendall(frame(0x1, b"warm up"))
        read_frame(sock)
        before = rss(proc)
        sock.sendall(frame(0x2, bomb, rsv1=True))
        assert close_code(sock) == 1009
        sock.close()
        # A generous bound: the limit (1 MiB) plus the compressed copy and
        # allocator slack, far below the 256 MiB the bomb inflates to.
        assert rss(proc) - before < 32 << 20
        # The server still serves.
        with connect(proc.ws_url("/")) as ws:
            ws.send("after the bomb")
            assert ws.recv() == "after the bomb"


def test_inflated_size_limit_is_exact():
    with running("--websocket-max-message-size", "1000") as proc:
        for size, code in ((1000, None), (1001, 1009)):
            sock, _ = handshake(proc.port, "permessage-deflate")
            sock.sendall(frame(0x2, compress(b"a" * size), rsv1=True))
            if code is None:
                opcode, rsv1, payload = read_frame(sock)
                assert zlib.decompressobj(-15).decompress(payload + TAIL) == b"a" * size
            else:
                assert close_code(sock) == code
            sock.close()


def rss_per_connection(*flags: str, n: int = 200) -> float:
    """The server's RSS growth per open connection that has exchanged one
    compressed message each way (bytes)."""
    with running(*flags) as proc:
        socks = []
        before = rss(proc)
        for _ in range(n):
            sock, _ = handshake(proc.port, "permessage-deflate; client_max_window_bits")
            sock.sendall(frame(0x1, compress(b"hello there " * 20, bits=12), rsv1=True))
            socks.append(sock)
        for sock in socks:
            read_frame(sock)
        grown = rss(proc) - before
        for sock in socks:
            sock.close()
    return grown / n


def test_many_compressed_connections_stay_within_the_stated_memory():
    """Each connection that has exchanged a compressed message holds its
    zlib state. Measured RSS per connection over one without deflate: 58
    KiB with the defaults (12-bit windows, memLevel 5), 116 KiB with
    zlib's (15-bit windows, memLevel 8); 89 and 196 KiB under ASan."""
    off = rss_per_connection("--ws-per-message-deflate", "false")
    small = rss_per_connection() - off
    big = rss_per_connection("--ws-deflate-window-bits", "15", "--ws-deflate-mem-level", "8") - off
    assert small < 128 * 1024, (small, big)
    # The flags bound the state: the defaults take well under zlib's.
    assert small < 0.7 * big, (small, big)
