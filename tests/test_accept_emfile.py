"""Accepting when the server process is out of file descriptors.

libuv (uv__server_io) meets EMFILE with a spare descriptor it frees to
accept and close the waiting connections.  Without that spare (another
thread took its slot; here: a soft RLIMIT_NOFILE at or below its number)
it would call accept() again at once, for as long as the shortage lasts,
and the server would serve nothing meanwhile.  The server stops accepting
for a moment instead, serves what it has, and accepts again."""

from __future__ import annotations

import os
import resource
import socket
import time

import httpx

from .conftest import Reader, connect

APP = "tests.apps.http1:app"


def get(sock: socket.socket) -> int:
    """One keep-alive GET / on sock (a whole response read): its status."""
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    return Reader(sock, timeout=10).response().status


def open_fds(pid: int) -> dict[int, str]:
    return {int(n): os.readlink(f"/proc/{pid}/fd/{n}") for n in os.listdir(f"/proc/{pid}/fd")}


def test_server_keeps_serving_while_it_cannot_accept(serve):
    proc = serve(APP, "--timeout-keep-alive", "60")
    pid = proc.proc.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    old = connect(proc)
    assert get(old) == 200
    fds = open_fds(pid)
    # libuv's spare descriptor: the first /dev/null after stdin.
    reserve = min(n for n, target in fds.items() if n > 2 and target == "/dev/null")
    assert all(n in fds for n in range(reserve)), fds
    # No descriptor can be made now, and freeing the spare does not help.
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (reserve, hard))
    try:
        new = connect(proc)  # Queued: the server cannot accept it.
        # The server does not spin on accept(): its open connection is served.
        assert get(old) == 200
        proc.wait_log(r"accept\(\): too many open files: not accepting connections "
                      r"for 100 ms at a time until some close")
        time.sleep(0.35)  # A few tries to listen again, which fail.
        assert get(old) == 200
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    # Descriptors again: the queued connection and a new one are served.
    assert get(new) == 200
    assert httpx.get(proc.url("/"), timeout=10).status_code == 200
    new.close()
    old.close()


def test_connections_past_the_limit_are_shed_then_the_server_accepts_again(serve):
    proc = serve(APP)
    pid = proc.proc.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (max(open_fds(pid)) + 1 + 10, hard))
    try:
        socks = [connect(proc) for _ in range(40)]
        served = 0
        for s in socks:
            try:
                served += get(s) == 200
            except (OSError, EOFError):
                pass  # Shed: accepted and closed at once.
        assert 0 < served <= 10
        for s in socks:
            s.close()
        # Once those close, new connections are served (limit unchanged).
        for _ in range(3):
            assert httpx.get(proc.url("/"), timeout=10).status_code == 200
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))


def test_unix_listener_keeps_its_path_while_paused(serve, tmp_path):
    path = str(tmp_path / "s.sock")
    proc = serve(APP, "-u", path, port=False)

    def connect_unix() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(5)
        sock.connect(path)
        return sock

    pid = proc.proc.pid
    old = connect_unix()
    assert get(old) == 200
    fds = open_fds(pid)
    reserve = min(n for n, target in fds.items() if n > 2 and target == "/dev/null")
    _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (reserve, hard))
    queued = connect_unix()
    assert get(old) == 200
    proc.wait_log(r"accept\(\): too many open files")
    assert os.path.exists(path)  # Closing the listening handle kept it.
    assert proc.stop() == 0
    assert not os.path.exists(path)  # Removed at exit, as always.
    queued.close()
    old.close()
