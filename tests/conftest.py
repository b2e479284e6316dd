"""A real cdaphne process per test, and raw-socket helpers.

`serve("module:attr", *flags)` starts `python -m cdaphne -p 0 ... module:attr`
from the repository root, reads its stderr until every `Listening on ...`
line is there and returns a `ServerProcess`.  At teardown the server gets
SIGTERM and must exit 0 (a crash or a hang fails the test); its stderr
stays available (`proc.log`) for assertions on logs.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator

import pytest

from .serverproc import ROOT, ServerProcess, strip_asan_preload_for_native_programs

__all__ = ["ROOT", "ServerProcess"]

# `make test-asan` preloads libasan into this process; Python children
# (servers, CLIs) inherit it, native ones (chromedriver, redis-server, wrk)
# must not: chromedriver aborts under it.
strip_asan_preload_for_native_programs()


@pytest.fixture
def serve() -> Iterator:
    """serve(app, *flags, listen=1, pass_fds=(), port=True) -> ServerProcess."""
    procs: list[ServerProcess] = []

    def start(app: str, *flags: str, listen: int = 1, pass_fds: tuple[int, ...] = (),
              port: bool = True, env: dict[str, str] | None = None) -> ServerProcess:
        argv = (["-p", "0"] if port else []) + list(flags) + [app]
        proc = ServerProcess(argv, pass_fds=pass_fds, env=env)
        procs.append(proc)
        if listen:
            proc.wait_listening(listen)
        return proc

    yield start
    errors = []
    for proc in procs:
        if proc.stopped:
            continue
        rc = proc.stop()
        if proc.expected_exit is not None and rc != proc.expected_exit:
            errors.append(f"server {proc.argv} exited {rc}:\n{proc.log_tail()}")
    for proc in procs:
        if any(m in proc.log for m in ("Segmentation fault", "Fatal Python error",
                                       "AddressSanitizer")):
            errors.append(f"server {proc.argv} crashed:\n{proc.log_tail()}")
    if errors:
        pytest.fail("\n".join(errors))


@pytest.fixture
def server(serve) -> ServerProcess:
    """The general-purpose test app (tests.apps.http1:app) on a TCP port."""
    return serve("tests.apps.http1:app")


# ---- raw sockets -----------------------------------------------------------

def connect(proc: ServerProcess, timeout: float = 5.0, **kw) -> socket.socket:
    sock = socket.create_connection((proc.host, proc.port), timeout=timeout, **kw)
    return sock


def recv_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Read until the peer closes (fails on timeout)."""
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def is_closed(sock: socket.socket, timeout: float = 3.0) -> bool:
    """True if the peer closed (EOF or reset) within timeout, with no data first."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(65536)
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return data == b""


class Response:
    def __init__(self, status: int, reason: str, version: str,
                 headers: list[tuple[str, str]], body: bytes, chunked: bool,
                 raw_head: bytes) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.body = body
        self.chunked = chunked
        self.raw_head = raw_head

    def header(self, name: str) -> str | None:
        vals = [v for k, v in self.headers if k.lower() == name.lower()]
        return vals[0] if vals else None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.headers} {self.body[:80]!r}>"


class Reader:
    """Parses HTTP/1.x responses off a socket, byte-exact."""

    def __init__(self, sock: socket.socket, timeout: float = 5.0) -> None:
        self.sock = sock
        self.buf = b""
        sock.settimeout(timeout)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed")
        self.buf += data

    def read_until(self, sep: bytes) -> bytes:
        while sep not in self.buf:
            self._fill()
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_to_eof(self) -> bytes:
        while True:
            try:
                self._fill()
            except (EOFError, ConnectionResetError):
                break
        out, self.buf = self.buf, b""
        return out

    def response(self, head_request: bool = False) -> Response:
        raw = self.read_until(b"\r\n\r\n")
        lines = raw[:-4].decode("latin-1").split("\r\n")
        version, status, *reason = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers.append((k, v.strip()))
        status_i = int(status)
        hmap = {k.lower(): v for k, v in headers}
        chunked = "chunked" in hmap.get("transfer-encoding", "").lower()
        body = b""
        if head_request or status_i in (204, 304) or status_i < 200:
            pass
        elif chunked:
            parts = []
            while True:
                size_line = self.read_until(b"\r\n")
                size = int(size_line.strip().split(b";")[0], 16)
                if size == 0:
                    self.read_until(b"\r\n")
                    break
                parts.append(self.read_exact(size))
                assert self.read_exact(2) == b"\r\n"
            body = b"".join(parts)
        elif "content-length" in hmap:
            body = self.read_exact(int(hmap["content-length"]))
        else:
            body = self.read_to_eof()
        return Response(status_i, reason[0] if reason else "", version, headers, body,
                        chunked, raw)


def request(proc: ServerProcess, data: bytes, timeout: float = 5.0) -> Response:
    """One raw request on a fresh connection; returns the parsed response."""
    with connect(proc, timeout) as sock:
        sock.sendall(data)
        return Reader(sock, timeout).response()


def wait_until(pred, timeout: float = 5.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def readable(sock: socket.socket, timeout: float) -> bool:
    r, _, _ = select.select([sock], [], [], timeout)
    return bool(r)
