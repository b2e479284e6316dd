"""What a user switching from Daphne notices first (docs/migrating.md): the
access log on stdout by default, Daphne's startup lines, its flags and
environment, and headers with '_' dropped as Daphne drops them."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time

import httpx
import websocket

from .conftest import ROOT, ServerProcess, request
from .test_cli import assert_one_clear_line, run_cli, unix_get

APP = "tests.apps.http1:app"
LINE = re.compile(r'^(\S+) - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d\] "([^"]*)" (\S+) (\S+)$')


def access_lines(proc, count: int, timeout: float = 5.0) -> list[re.Match]:
    """The first `count` access-log lines on the server's stdout."""
    deadline = time.monotonic() + timeout
    while True:
        found = [m for ln in proc.stdout.splitlines() if (m := LINE.match(ln))]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


# ---- the access log ----------------------------------------------------------

def test_access_log_on_stdout_by_default_in_daphne_format(serve):
    proc = serve(APP)
    assert httpx.get(proc.url("/hello?x=1&y=%20")).status_code == 200
    assert httpx.get(proc.url("/missing")).status_code == 404
    first, second = access_lines(proc, 2)
    # Daphne's line: client, the request target as sent (query included),
    # status and body size.
    assert first.group(1).startswith("127.0.0.1:")
    assert first.group(2, 3, 4) == ("GET /hello?x=1&y=%20", "200", "13")
    assert second.group(2, 3, 4) == ("GET /missing", "404", "9")


def test_access_log_websocket_events(serve):
    proc = serve("tests.apps.ws:echo")
    ws = websocket.create_connection(proc.ws_url("/chat/"), timeout=5)
    ws.send("hi")
    assert ws.recv() == "hi"
    ws.close()
    lines = access_lines(proc, 3)
    assert [m.group(2) for m in lines] == ["WSCONNECTING /chat/", "WSCONNECT /chat/",
                                           "WSDISCONNECT /chat/"]
    assert all(m.group(3, 4) == ("-", "-") for m in lines)


def test_no_access_log_turns_it_off(serve):
    proc = serve(APP, "--no-access-log")
    assert httpx.get(proc.url("/hello")).status_code == 200
    assert proc.stop() == 0
    assert proc.stdout == ""


def test_verbosity_0_writes_no_access_log(serve, tmp_path):
    # -v 0 logs no "Listening on" line either: wait for the socket file.
    path = tmp_path / "s.sock"
    proc = serve(APP, "-v", "0", "-u", str(path), port=False, listen=0)
    deadline = time.monotonic() + 10
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    while True:
        try:
            assert unix_get(str(path), "/hello").status_code == 200
            break
        except httpx.ConnectError:  # Bound, not listening yet.
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert proc.stop() == 0
    assert proc.stdout == ""


def test_access_log_to_a_file_and_not_stdout(serve, tmp_path):
    path = tmp_path / "access.log"
    proc = serve(APP, "--access-log", str(path))
    assert httpx.get(proc.url("/hello")).status_code == 200
    assert proc.stop() == 0
    assert proc.stdout == ""
    (line,) = path.read_text().splitlines()
    assert LINE.match(line).group(2, 3, 4) == ("GET /hello", "200", "13")


def test_access_log_and_no_access_log_conflict():
    assert_one_clear_line(run_cli("--access-log", "-", "--no-access-log", APP),
                          "--no-access-log")


# ---- startup lines -------------------------------------------------------------

def test_daphne_startup_lines(serve):
    proc = serve(APP)
    log = proc.log
    assert "Starting server at tcp:port=0:interface=127.0.0.1" in log
    assert "HTTP/2 support not enabled" in log
    assert "Configuring endpoint tcp:port=0:interface=127.0.0.1" in log
    assert f"Listening on TCP address 127.0.0.1:{proc.port}" in log


def test_startup_lines_escape_ipv6_as_daphne_does(serve, tmp_path):
    sock = str(tmp_path / "s.sock")
    proc = serve(APP, "-b", "::1", "-u", sock, listen=2)
    # Daphne sorts its endpoint strings and escapes ':' in an interface.
    assert rf"Starting server at tcp:port=0:interface=\:\:1, unix:{sock}" in proc.log
    assert f"Configuring endpoint unix:{sock}" in proc.log


# ---- flags and environment ----------------------------------------------------

def test_asgi_threads_sizes_the_default_executor(serve):
    proc = serve("tests.apps.loopinfo:app", env={"ASGI_THREADS": "3"})
    assert httpx.get(proc.url("/")).json() == {"debug": False, "max_workers": 3}


def test_bad_asgi_threads_is_one_clear_line():
    proc = subprocess.run([sys.executable, "-m", "cdaphne", "-p", "0", "--lifespan", "off", APP],
                          cwd=ROOT, env=dict(os.environ, ASGI_THREADS="many"),
                          capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    assert_one_clear_line(proc, "ASGI_THREADS", "many")


def test_verbosity_3_turns_on_asyncio_debug(serve):
    proc = serve("tests.apps.loopinfo:app", "-v", "3")
    assert httpx.get(proc.url("/")).json()["debug"] is True


def test_proxy_headers_host_needs_proxy_headers():
    assert_one_clear_line(run_cli("--proxy-headers-host", "X-Real-IP", APP),
                          "--proxy-headers-host", "--proxy-headers")


def test_proxy_headers_port_needs_proxy_headers():
    assert_one_clear_line(run_cli("--proxy-headers-port", "X-Port", APP),
                          "--proxy-headers-port", "--proxy-headers")


# ---- headers with '_' ---------------------------------------------------------

def test_http_header_with_underscore_is_dropped(serve):
    proc = serve("tests.apps.parity:app")
    r = request(proc, b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Auth_User: evil\r\n"
                      b"X-Auth-User: proxy\r\nX_Other: y\r\n\r\n")
    assert r.status == 200
    names = [n for n, _ in json.loads(r.body)["headers"]]
    assert names == ["host", "x-auth-user"]


def test_websocket_header_with_underscore_is_dropped(serve):
    proc = serve("tests.apps.parity:app")
    ws = websocket.create_connection(proc.ws_url("/ws"), timeout=5,
                                     header=["X-Auth_User: evil", "X-Auth-User: proxy"])
    try:
        seen = json.loads(ws.recv())
    finally:
        ws.close()
    names = [n for n, _ in seen["headers"]]
    assert "x-auth-user" in names
    assert "x-auth_user" not in names


# ---- endpoints -----------------------------------------------------------------

# `python -m cdaphne` under umask 077, started as Python (not through sh) so
# that the sanitized run's LD_PRELOAD reaches it.
UMASK_077 = [sys.executable, "-c",
             "import os, runpy; os.umask(0o077); "
             "runpy.run_module('cdaphne', run_name='__main__', alter_sys=True)"]


def test_unix_socket_is_0666_whatever_the_umask(tmp_path):
    # Twisted chmods Daphne's socket to 0666: nginx running as another user
    # can connect.  A umask-made 0700 socket would give it EACCES (a 502).
    path = tmp_path / "s.sock"
    proc = ServerProcess(["-u", str(path), APP], cmd=UMASK_077)
    try:
        proc.wait_listening()
        assert stat.S_IMODE(path.stat().st_mode) == 0o666
    finally:
        assert proc.stop() == 0


def test_unix_socket_is_0666_with_workers(tmp_path):
    path = tmp_path / "w.sock"
    proc = ServerProcess(["--workers", "1", "-u", str(path), APP], cmd=UMASK_077)
    try:
        proc.wait_listening()
        assert stat.S_IMODE(path.stat().st_mode) == 0o666
        assert unix_get(str(path), "/hello").status_code == 200
    finally:
        assert proc.stop() == 0


def test_unix_endpoint_mode(tmp_path):
    path = tmp_path / "m.sock"
    proc = ServerProcess(["-e", f"unix:{path}:mode=640", APP], cmd=UMASK_077)
    try:
        proc.wait_listening()
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        assert unix_get(str(path), "/hello").status_code == 200
    finally:
        assert proc.stop() == 0


def test_tcp6_endpoint(serve):
    proc = serve(APP, "-e", r"tcp6:port=0:interface=\:\:1", port=False)
    assert proc.host == "::1"
    assert httpx.get(proc.url("/")).content == b"Hello, world!"


# ---- uvicorn's spellings ---------------------------------------------------------

def test_uvicorn_spellings_map_onto_daphne_flags():
    from cdaphne.cli import config_from_args

    c = config_from_args(["--ws-ping-interval", "7", "--ws-ping-timeout", "8",
                          "--no-server-header", "--backlog", "64", "--log-level", "debug", APP])
    assert (c.ping_interval, c.ping_timeout, c.server_name, c.backlog, c.verbosity) == \
        (7, 8, None, 64, 2)


def test_log_level_warning_is_quiet_like_uvicorn(serve, tmp_path):
    path = tmp_path / "q.sock"
    proc = serve(APP, "--log-level", "warning", "-u", str(path), port=False, listen=0)
    deadline = time.monotonic() + 10
    while True:
        try:
            assert unix_get(str(path), "/hello").status_code == 200
            break
        except (httpx.ConnectError, FileNotFoundError):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert proc.stop() == 0
    assert proc.stdout == ""
    assert "Listening on" not in proc.log


def test_no_server_header(serve):
    proc = serve(APP, "--no-server-header")
    assert "server" not in httpx.get(proc.url("/hello")).headers


def spawn_with_stdout(wfd: int) -> tuple[subprocess.Popen, int]:
    """A cdaphne process whose stdout is wfd (closed here), and its port."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    proc = subprocess.Popen([sys.executable, "-m", "cdaphne", "-p", "0", APP], cwd=ROOT,
                            stdout=wfd, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env=env)
    os.close(wfd)
    assert proc.stderr is not None
    for raw in proc.stderr:
        m = re.search(rb"Listening on TCP address \S+:(\d+)", raw)
        if m:
            return proc, int(m.group(1))
    proc.kill()
    proc.wait()
    raise AssertionError("no listening line")


def test_a_stdout_nobody_reads_does_not_stall_the_server(tmp_path):
    """The access log wrote to stdout blocking on the loop thread: once a
    pipe nobody reads was full, every connection stalled.  Now what the
    pipe does not take waits (up to 1 MiB) and goes out once it is read."""
    import fcntl

    rfd, wfd = os.pipe()
    fcntl.fcntl(wfd, 1031, 4096)  # F_SETPIPE_SZ: a page holds ~60 lines
    proc, port = spawn_with_stdout(wfd)
    try:
        with httpx.Client(timeout=5) as client:
            for i in range(300):  # ~21 KB of lines: five times the pipe
                assert client.get(f"http://127.0.0.1:{port}/hello?n={i}").status_code == 200
        # Read now: every line comes out, in order.
        os.set_blocking(rfd, False)
        got = b""
        deadline = time.monotonic() + 10
        while got.count(b"GET /hello") < 300 and time.monotonic() < deadline:
            try:
                got += os.read(rfd, 65536)
            except BlockingIOError:
                time.sleep(0.05)
        numbers = [int(n) for n in re.findall(rb"GET /hello\?n=(\d+)", got)]
        assert numbers == list(range(300))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()  # stalled in a write (the old behaviour)
            proc.wait()
        os.close(rfd)


def test_a_line_over_4_kib_does_not_take_the_lines_after_it_into_a_split_write():
    """Lines go to a stdout pipe in writes of up to 4 KiB (PIPE_BUF) ending
    on a line, so another writer of the pipe (a worker) never lands inside
    one.  A first line over 4 KiB made the write the whole backlog: a pipe
    with room for part of it took part, cutting a short line after it, and
    the other writer's line went into that line.  Here the test is the
    other writer: the pipe is full, it frees two pages, then writes its own
    line as soon as it has read what the server wrote."""
    rfd, wfd = os.pipe()
    other = os.dup(wfd)
    os.set_blocking(other, False)
    page = b"P" * 4095 + b"\n"
    proc, port = spawn_with_stdout(wfd)
    got = b""
    try:
        try:
            while True:  # Full (16 pages).
                os.write(other, page)
        except BlockingIOError:
            pass
        with httpx.Client(timeout=5) as client:
            client.get(f"http://127.0.0.1:{port}/hello?long={'x' * 5000}")
            for i in range(60):
                assert client.get(f"http://127.0.0.1:{port}/hello?n={i}").status_code == 200
        time.sleep(0.3)
        got += os.read(rfd, 4096) + os.read(rfd, 4096)  # Two pages free.
        time.sleep(0.5)  # The server's retries write what the pipe takes.
        os.set_blocking(rfd, False)
        deadline = time.monotonic() + 10
        wrote = False
        while b"GET /hello?n=59" not in got and time.monotonic() < deadline:
            try:
                got += os.read(rfd, 65536)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            if not wrote and got.count(b"\n") >= 16:  # The pages read.
                os.write(other, b"OTHER\n")
                wrote = True
        assert wrote
    finally:
        os.close(other)
        proc.terminate()
        try:
            proc.wait(timeout=15)
        finally:
            os.close(rfd)
    lines = got.decode("utf-8", "replace").splitlines()
    mixed = [ln[:80] for ln in lines if ln not in ("P" * 4095, "OTHER") and not LINE.match(ln)]
    assert mixed == []
    assert [int(n) for n in re.findall(r"GET /hello\?n=(\d+)", "\n".join(lines))] == list(range(60))


def test_a_stdout_whose_reader_left_turns_the_log_off_with_a_warning():
    """The non-blocking writer's failed write left its memoryview of the
    backlog alive in the traceback, so clearing the backlog raised
    BufferError: "Exception in callback" instead of the warning."""
    rfd, wfd = os.pipe()
    proc, port = spawn_with_stdout(wfd)
    try:
        with httpx.Client(timeout=5) as client:
            assert client.get(f"http://127.0.0.1:{port}/hello?n=0").status_code == 200
            got = b""
            deadline = time.monotonic() + 5
            while b"GET /hello?n=0" not in got and time.monotonic() < deadline:
                got += os.read(rfd, 65536)
            assert b"GET /hello?n=0" in got
            os.close(rfd)
            rfd = -1
            for i in range(1, 4):  # The log goes; the server keeps serving.
                assert client.get(f"http://127.0.0.1:{port}/hello?n={i}").status_code == 200
                time.sleep(0.05)
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=15)
        finally:
            if rfd >= 0:
                os.close(rfd)
    assert proc.returncode == 0, err
    text = err.decode("utf-8", "replace")
    assert text.count("Access log disabled: cannot write to it") == 1, text
    assert "Traceback" not in text and "BufferError" not in text, text
