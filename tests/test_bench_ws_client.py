"""The C WebSocket echo load generator of the bench (bench/ws_echo_client.c).

Against cdaphne for one second, and against small Python servers in this file
that split, fragment and interleave frames, get the handshake wrong or corrupt
an echo: the client must count only checked echoes, and report every failure.
No timing assertions: counts only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from bench import env

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@pytest.fixture(scope="module")
def client() -> Path:
    return env.build_ws_client(lambda _msg: None)


def run_client(client: Path, url: str, connections: int, duration: float, size: int,
               status: int = 0) -> dict:
    """The client's report; status: the exit status it must end with (1:
    some connection failed, closed early or got a wrong echo)."""
    cmd = [str(client), "echo", "--url", url, "--connections", str(connections),
           "--duration", str(duration), "--size", str(size), "--first-id", "7"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30)
    assert proc.returncode == status, proc.stderr
    if status:
        assert proc.stderr.startswith("ws_echo_client: "), proc.stderr
        assert proc.stderr.count("\n") == 1, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("WSJSON "))
    report: dict = json.loads(line[len("WSJSON ") :])
    assert report["client"] == "c"
    return report


@pytest.mark.parametrize("size", [64, 300, 70000])
def test_echo_against_cdaphne_counts_checked_messages(serve, client: Path, size: int) -> None:
    server = serve("tests.apps.ws:echo")
    r = run_client(client, f"ws://127.0.0.1:{server.port}/echo", 4, 1, size)
    assert r["first_error"] == ""
    assert r["connected"] == 4
    assert r["messages"] > 0
    assert (r["mismatches"], r["closed_early"], r["connect_failures"]) == (0, 0, 0)
    assert r["client_cpu_s"] >= 0


# ---- a hand-written server that stresses the client's parser -----------------


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("peer closed")
        data += chunk
    return data


def _read_frame(sock: socket.socket) -> tuple[int, bytes]:
    b0, b1 = _recv_exact(sock, 2)
    assert b1 & 0x80, "client frames must be masked"
    assert b0 & 0x80, "the client sends unfragmented frames"
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", _recv_exact(sock, 2))
    elif n == 127:
        (n,) = struct.unpack("!Q", _recv_exact(sock, 8))
    mask = _recv_exact(sock, 4)
    data = _recv_exact(sock, n)
    return b0 & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def _frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


Behaviour = Callable[[socket.socket, int, bytes], None]


def _tricky_echo(sock: socket.socket, count: int, payload: bytes) -> None:
    """Echo as two fragments with a ping between them, one byte per send,
    every other message; the rest as one frame coalesced with a pong."""
    if count % 2:
        half = len(payload) // 2
        data = _frame(2, payload[:half], fin=False) + _frame(9, b"p%d" % count)
        data += _frame(0, payload[half:])
        for i in range(len(data)):
            sock.sendall(data[i : i + 1])
        opcode, pong = _read_frame(sock)
        assert (opcode, pong) == (10, b"p%d" % count)
    else:
        sock.sendall(_frame(10, b"unsolicited") + _frame(2, payload))


def _corrupt_echo(sock: socket.socket, count: int, payload: bytes) -> None:
    sock.sendall(_frame(2, payload[:-1] + bytes([payload[-1] ^ 1])))


class FakeServer:
    """Threaded test server: one thread per connection, `behaviour` answers
    each binary message; `accept` computes the Sec-WebSocket-Accept."""

    def __init__(self, behaviour: Behaviour, accept: Callable[[bytes], bytes]) -> None:
        self.behaviour = behaviour
        self.accept = accept
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.errors: list[str] = []
        self.messages = 0
        self.closes = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._accept_loop, daemon=True)]
        self.threads[0].start()

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            with sock:
                sock.settimeout(10)
                head = b""
                while b"\r\n\r\n" not in head:
                    head += sock.recv(4096)
                key = next(
                    line.split(b":", 1)[1].strip()
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"sec-websocket-key:")
                )
                sock.sendall(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                    + self.accept(key)
                    + b"\r\n\r\n"
                )
                count = 0
                while True:
                    opcode, payload = _read_frame(sock)
                    if opcode == 8:
                        sock.sendall(_frame(8, payload))
                        with self.lock:
                            self.closes += 1
                        return
                    assert opcode == 2, opcode
                    count += 1
                    with self.lock:
                        self.messages += 1
                    self.behaviour(sock, count, payload)
        except (OSError, ConnectionError, AssertionError) as exc:
            with self.lock:
                self.errors.append(repr(exc))

    def close(self) -> None:
        # A close alone leaves accept() blocked (Linux): the shutdown wakes
        # it, so that no thread outlives the test (a later fork() warns).
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        for t in self.threads:
            t.join(timeout=15)
            assert not t.is_alive(), "a test server thread did not stop"


def _good_accept(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


@pytest.fixture
def fake_server() -> Iterator[Callable[..., FakeServer]]:
    servers: list[FakeServer] = []

    def start(behaviour: Behaviour, accept: Callable[[bytes], bytes] = _good_accept) -> FakeServer:
        servers.append(FakeServer(behaviour, accept))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.mark.parametrize("size", [40, 200])
def test_split_fragmented_and_interleaved_frames_are_reassembled(
    fake_server, client: Path, size: int
) -> None:
    srv = fake_server(_tricky_echo)
    r = run_client(client, f"ws://127.0.0.1:{srv.port}/", 2, 1, size)
    srv.close()
    assert r["first_error"] == ""
    assert (r["mismatches"], r["closed_early"], r["connect_failures"]) == (0, 0, 0)
    assert r["messages"] > 2
    assert srv.errors == []
    assert srv.messages == r["messages"]  # every message sent was echoed and counted
    assert srv.closes == 2  # each connection ended with a close frame


def test_a_wrong_accept_fails_the_handshake(fake_server, client: Path) -> None:
    srv = fake_server(_tricky_echo, accept=lambda key: _good_accept(key + b"x"))
    r = run_client(client, f"ws://127.0.0.1:{srv.port}/", 3, 1, 64, status=1)
    srv.close()
    assert r["connect_failures"] == 3
    assert r["connected"] == 0 and r["messages"] == 0
    assert "handshake" in r["first_error"]


def test_a_refused_connection_is_a_failure_and_a_non_zero_exit(client: Path) -> None:
    # A benchmark pointed at a server that is not there must not pass for a
    # run: it exited 0 with no message sent.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed, nothing listens
    r = run_client(client, f"ws://127.0.0.1:{port}/", 3, 1, 64, status=1)
    assert r["connect_failures"] == 3 and r["connected"] == 0 and r["messages"] == 0
    assert "refused" in r["first_error"].lower()


def test_a_corrupted_echo_is_a_mismatch(fake_server, client: Path) -> None:
    srv = fake_server(_corrupt_echo)
    r = run_client(client, f"ws://127.0.0.1:{srv.port}/", 2, 1, 64, status=1)
    srv.close()
    assert r["mismatches"] == 2
    assert r["messages"] == 0
    assert "differs" in r["first_error"]


# ---- bench/ws_ceiling.c, the bare libuv echo that bench/ws_split.sh compares --


@pytest.mark.skipif(shutil.which("pkg-config") is None, reason="no pkg-config (libuv)")
@pytest.mark.parametrize("size", [64, 300])
def test_the_ws_ceiling_echoes_what_the_client_checks(client: Path, size: int) -> None:
    ceiling = env.build_ws_ceiling(lambda _msg: None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(ceiling), str(port)], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        assert "Listening on" in proc.stderr.readline()
        r = run_client(client, f"ws://127.0.0.1:{port}/", 3, 1, size)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert r["first_error"] == ""
    assert r["connected"] == 3
    assert r["messages"] > 0
    assert (r["mismatches"], r["closed_early"], r["connect_failures"]) == (0, 0, 0)
