"""The command line, signals and the ways to listen (TCP, unix, fd, -e)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from .conftest import ROOT, Reader, ServerProcess, connect

APP = "tests.apps.http1:app"


def run_cli(*argv: str, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cdaphne", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def assert_one_clear_line(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], err


def test_bad_flag():
    assert_one_clear_line(run_cli("--no-such-flag", APP), "--no-such-flag")


def test_bad_flag_value():
    assert_one_clear_line(run_cli("-p", "eighty", APP), "eighty")


def test_zero_buffer_size_is_refused():
    assert_one_clear_line(run_cli("-p", "0", "--write-buffer-size", "0", APP),
                          "write_buffer_size")
    assert_one_clear_line(run_cli("-p", "0", "--body-buffer-size", "0", APP),
                          "body_buffer_size")


def test_missing_application():
    assert_one_clear_line(run_cli("-p", "0"), "application")


def test_bad_module():
    assert_one_clear_line(run_cli("-p", "0", "tests.apps.no_such_module:app"),
                          "tests.apps.no_such_module")


def test_bad_attribute():
    assert_one_clear_line(run_cli("-p", "0", "tests.apps.http1:no_such_app"), "no_such_app")


def test_bad_import_string():
    assert_one_clear_line(run_cli("-p", "0", "nocolon"), "nocolon")


def test_module_raising_on_import():
    assert_one_clear_line(run_cli("-p", "0", "tests.apps.broken_import:app"),
                          "broken on purpose")


def test_busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = run_cli("-p", str(port), "--lifespan", "off", APP)
    assert_one_clear_line(proc, str(port))


def test_version():
    import importlib.metadata
    import platform

    import cdaphne

    proc = run_cli("--version")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    # One version, in cdaphne/__init__.py; the package metadata reads it.
    assert lines[0] == f"cdaphne {cdaphne.__version__}"
    assert importlib.metadata.version("cdaphne") == cdaphne.__version__
    assert re.fullmatch(r"libuv 1\.\d+\.\d+", lines[1]), lines
    assert re.fullmatch(r"llhttp \d+\.\d+\.\d+", lines[2]), lines
    # The libwslay-dev package's version, not wslayver.h's stale "1.0.1-DEV".
    assert re.fullmatch(r"wslay \d+\.\d+\.\d+", lines[3]), lines
    assert re.match(r"OpenSSL \d+\.\d+\.\d+", lines[4]), lines
    assert lines[5] == f"{platform.python_implementation()} {platform.python_version()}"
    assert len(lines) == 6


# ---- signals ---------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_idle_server_promptly(serve, sig):
    proc = serve(APP)
    assert httpx.get(proc.url("/")).status_code == 200
    t0 = time.monotonic()
    rc = proc.stop(sig, timeout=5)
    assert rc == 0
    assert time.monotonic() - t0 < 1.0
    assert "Traceback" not in proc.log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_second_signal_while_executor_threads_run_ends_the_process_by_it(serve, sig):
    # The stop is over but an executor thread runs on (60 s): a second
    # signal ends the process by that signal, as uvicorn's every signalled
    # stop does.  Our handlers were gone by then: SIGTERM killed us the
    # same way by chance, SIGINT raised KeyboardInterrupt (a traceback).
    proc = serve("tests.apps.slow:app")
    assert httpx.get(proc.url("/?thread=60")).text == "started;finished"
    proc.send_signal(sig)
    proc.wait_log("Waiting for executor threads to finish")
    proc.send_signal(sig)
    proc.expected_exit = -sig
    assert proc.wait(timeout=20) == -sig
    assert "Traceback" not in proc.log
    assert "Exiting now: executor threads still running" in proc.log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_before_the_executor_wait_is_announced_lets_the_stop_finish(serve, sig):
    # A worker whose boot failed met the supervisor's stop in its (empty)
    # wait for executor threads, logged "Exiting now: executor threads still
    # running" and died by the signal.  Only once the wait is announced does
    # a signal end the process; before, it is part of the stop.
    proc = serve("tests.apps.slow:app")
    assert httpx.get(proc.url("/?thread=1.5")).text == "started;finished"
    proc.send_signal(sig)
    time.sleep(0.2)  # the stop is over, the wait's first 0.5 s run
    proc.send_signal(sig)
    assert proc.wait(timeout=20) == 0
    assert "Exiting now" not in proc.log
    assert "Traceback" not in proc.log


def test_signal_stops_with_idle_keep_alive_connection_promptly(serve):
    proc = serve(APP)
    with connect(proc) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        Reader(sock).response()
        t0 = time.monotonic()
        assert proc.stop(signal.SIGTERM, timeout=5) == 0
        assert time.monotonic() - t0 < 1.0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_in_flight_request_finishes_then_lifespan_shutdown(serve, tmp_path, sig):
    marker = tmp_path / "marker"
    proc = serve("tests.apps.slow:app", "--lifespan", "on",
                 env={"CDAPHNE_TEST_MARKER": str(marker)})
    with connect(proc) as sock:
        sock.sendall(b"GET /?s=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = Reader(sock)
        reader.read_until(b"started;")
        t0 = time.monotonic()
        proc.send_signal(sig)
        rest = reader.read_until(b"0\r\n\r\n")
        assert b"finished" in rest
        rc = proc.wait(10)
    assert rc == 0
    assert time.monotonic() - t0 < 3
    assert marker.read_text() == "shutdown\n"
    assert "Traceback" not in proc.log


def test_new_connections_refused_while_draining(serve):
    proc = serve("tests.apps.slow:app")
    with connect(proc) as sock:
        sock.sendall(b"GET /?s=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        Reader(sock).read_until(b"started;")
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(OSError):
            with socket.create_connection((proc.host, proc.port), timeout=1) as s2:
                s2.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                if not s2.recv(100):
                    raise ConnectionResetError
        assert proc.wait(10) == 0


# ---- listening -------------------------------------------------------------

def unix_get(path: str, target: str = "/scope") -> httpx.Response:
    transport = httpx.HTTPTransport(uds=path)
    with httpx.Client(transport=transport) as client:
        return client.get(f"http://localhost{target}")


def test_unix_socket(serve, tmp_path):
    path = str(tmp_path / "s.sock")
    proc = serve(APP, "-u", path, port=False)
    assert "unix socket" in proc.listening[0]
    scope = unix_get(path).json()
    assert scope["server"] == [path, None]
    assert scope["client"] is None
    assert proc.stop() == 0


def test_unix_socket_stale_file_is_replaced(serve, tmp_path):
    path = str(tmp_path / "s.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()
    serve(APP, "-u", path, port=False)
    assert unix_get(path, "/").status_code == 200


def test_inherited_fd(serve):
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    port = lsock.getsockname()[1]
    os.set_inheritable(lsock.fileno(), True)
    proc = serve(APP, "--fd", str(lsock.fileno()), port=False, pass_fds=(lsock.fileno(),))
    lsock.close()
    assert proc.port == port
    r = httpx.get(f"http://127.0.0.1:{port}/scope").json()
    assert r["server"] == ["127.0.0.1", port]


# cdaphne started with stdin and stdout closed (a daemon's `<&- >&-`): the
# interpreter's own closes them here, before anything of cdaphne's runs.
CLOSED_STDIO = ("import os, runpy, sys; os.close(0); os.close(1); sys.argv[0] = 'cdaphne'; "
                "runpy.run_module('cdaphne', run_name='__main__')")


def test_closed_stdin_and_stdout_serve_and_exit_cleanly():
    # libuv's epoll descriptor took fd 0, and libuv asserts that it never
    # closes 0-2: the server aborted at shutdown (and a connection on one of
    # them would never be closed).  The loop now opens /dev/null on them.
    proc = ServerProcess(["-p", "0", "--access-log", "-", APP],
                         cmd=[sys.executable, "-c", CLOSED_STDIO])
    try:
        proc.wait_listening()
        for _ in range(3):
            r = httpx.get(proc.url("/hello"), headers={"connection": "close"}, timeout=5)
            assert r.status_code == 200
    finally:
        rc = proc.stop()
    assert rc == 0, proc.log_tail()
    assert "Assertion" not in proc.log


def test_closed_stdin_and_stdout_with_workers_give_them_dev_null(tmp_path):
    # The supervisor's listening socket took fd 1, and its workers, which
    # inherit its stdout, wrote their access log (and would print) into it.
    path = str(tmp_path / "w.sock")
    proc = ServerProcess(["--workers", "2", "-u", path, "--access-log", "-", APP],
                         cmd=[sys.executable, "-c", CLOSED_STDIO])
    try:
        proc.wait_listening()
        for _ in range(6):
            assert unix_get(path, "/hello").status_code == 200
        time.sleep(0.2)
    finally:
        rc = proc.stop()
    assert rc == 0, proc.log_tail()
    assert "Access log disabled" not in proc.log, proc.log_tail()


def test_endpoint_tcp_and_unix_together(serve, tmp_path):
    path = str(tmp_path / "e.sock")
    proc = serve(APP, "-e", "tcp:0:interface=127.0.0.1", "-e", f"unix:{path}",
                 port=False, listen=2)
    assert proc.port
    assert httpx.get(proc.url("/")).content == b"Hello, world!"
    assert unix_get(path, "/").content == b"Hello, world!"


def test_endpoint_bad_string():
    assert_one_clear_line(run_cli("-e", "tcp:notaport", APP), "tcp:notaport")


def test_access_log_to_stdout(serve):
    proc = serve(APP, "--access-log", "-")
    httpx.get(proc.url("/hello?x=1"))
    deadline = time.monotonic() + 3
    while "GET /hello" not in proc.stdout and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.stop()
    line = [ln for ln in proc.stdout.splitlines() if "GET /hello" in ln][0]
    assert line.startswith("127.0.0.1:")
    assert '"GET /hello?x=1" 200 13' in line


def test_not_callable_application():
    assert_one_clear_line(run_cli("-p", "0", "tests.apps.http1:REPORT"), "not callable")


def test_bind_ipv6(serve):
    proc = serve(APP, "-b", "::1")
    assert proc.host == "::1"
    scope = httpx.get(proc.url("/scope")).json()
    assert scope["server"] == ["::1", proc.port]
    assert scope["client"][0] == "::1"


def test_endpoint_ipv6_with_twisted_escapes(serve):
    proc = serve(APP, "-e", r"tcp:port=0:interface=\:\:1", port=False)
    assert proc.host == "::1"
    assert httpx.get(proc.url("/")).content == b"Hello, world!"


def test_inherited_unix_socket_fd(serve, tmp_path):
    path = str(tmp_path / "fd.sock")
    lsock = socket.socket(socket.AF_UNIX)
    lsock.bind(path)
    lsock.listen(16)
    os.set_inheritable(lsock.fileno(), True)
    serve(APP, "--fd", str(lsock.fileno()), port=False, pass_fds=(lsock.fileno(),))
    lsock.close()
    scope = unix_get(path).json()
    assert scope["server"] == [path, None]
    assert scope["client"] is None


def test_bind_hostname_localhost_resolves(serve):
    proc = serve(APP, "-b", "localhost")
    assert proc.host in ("127.0.0.1", "::1")
    assert httpx.get(proc.url("/")).status_code == 200


def test_unix_socket_path_too_long_is_refused(tmp_path):
    path = "/tmp/" + "s" * 150 + ".sock"
    proc = run_cli("-u", path, APP)
    assert_one_clear_line(proc, "too long")
    assert not os.path.exists(path[:107])
    assert not [p for p in os.listdir("/tmp") if p.startswith("s" * 100)]


def test_unix_socket_in_missing_directory(tmp_path):
    path = str(tmp_path / "missing" / "x.sock")
    proc = run_cli("-u", path, "--lifespan", "off", APP)
    assert_one_clear_line(proc, path)


@pytest.mark.parametrize(("flag", "value", "needle"), [
    # NaN or inf seconds reached the C core's (uint64_t) casts (undefined).
    ("--ping-interval", "inf", "ping_interval"),
    ("--ping-timeout", "nan", "ping_timeout"),
    ("--websocket_timeout", "nan", "websocket_timeout"),
    ("--websocket_connect_timeout", "inf", "websocket_connect_timeout"),
    ("--application-close-timeout", "nan", "application_close_timeout"),
    ("-t", "inf", "http_timeout"),
    ("--timeout-graceful-shutdown", "nan", "graceful_timeout"),
    ("--timeout-lifespan-shutdown", "inf", "lifespan_shutdown_timeout"),
    ("--body-rate-grace", "inf", "body_rate_grace"),
    ("--timeout-keep-alive", "99999999999", "timeout_keep_alive"),
    # Beyond what a double holds exactly (cast to uint64: undefined).
    ("--max-body-size", "99999999999999999999999", "max_body_size"),
    ("--websocket-max-message-size", "99999999999999999999999", "websocket_max_message_size"),
    # C ints: 2**31 wrapped negative and turned every request into a 503;
    # a huge backlog was an OverflowError traceback.
    ("--limit-concurrency", "2147483648", "limit_concurrency"),
    ("--backlog", "99999999999", "backlog"),
    # A traceback (ValueError: negative file descriptor).
    ("--fd", "-1", "fd"),
    # Daphne's -v is 0..3 (it raises KeyError beyond); -1 meant debug here.
    ("-v", "4", "verbosity"),
    ("-v", "-1", "verbosity"),
])
def test_out_of_range_number_is_one_line(flag, value, needle):
    proc = run_cli("-p", "0", "--lifespan", "off", flag, value, APP)
    assert_one_clear_line(proc, needle, value)


def test_out_of_range_number_with_workers_is_one_line():
    proc = run_cli("-p", "0", "--workers", "2", "--ping-interval", "nan", APP)
    assert_one_clear_line(proc, "ping_interval", "nan")


def test_access_log_that_cannot_be_opened_is_one_line(tmp_path):
    """It was a FileNotFoundError traceback, with the lifespan task left
    pending ("Task was destroyed but it is pending!")."""
    path = str(tmp_path / "missing" / "access.log")
    proc = run_cli("-p", "0", APP, "--access-log", path)
    assert_one_clear_line(proc, path, "No such file")


@pytest.mark.parametrize("argv", [
    ("-e", "tcp:\u00b2"),
    ("-e", "ssl:\u00b2:privateKey=k.pem"),
    ("-e", "fd:fileno=\u00b2"),
    ("-e", "tcp:" + "1" * 5000),
])
def test_endpoint_with_non_ascii_digits_is_one_line(argv):
    """'²'.isdigit() is True and int('²') raises: a ValueError traceback."""
    assert_one_clear_line(run_cli("--lifespan", "off", *argv, APP), "endpoint")


@pytest.mark.parametrize("var", ["WEB_CONCURRENCY", "ASGI_THREADS"])
def test_environment_number_with_non_ascii_digit_is_one_line(var):
    proc = subprocess.run([sys.executable, "-m", "cdaphne", "-p", "0", "--lifespan", "off", APP],
                          cwd=ROOT, capture_output=True, text=True, timeout=10,
                          stdin=subprocess.DEVNULL, env={**os.environ, var: "\u00b2"})
    assert_one_clear_line(proc, var)


def test_unix_socket_in_missing_directory_says_so(tmp_path):
    """libuv turns bind()'s ENOENT into EACCES: it said 'permission denied'
    (with --workers, the supervisor binds: it says No such file or directory)."""
    path = str(tmp_path / "missing" / "x.sock")
    proc = run_cli("-u", path, "--lifespan", "off", APP)
    assert_one_clear_line(proc, path, "No such file or directory")
    assert "permission denied" not in proc.stderr


@pytest.mark.parametrize("kwargs", [
    "port='8000'",  # TypeError: '<=' not supported between int and str
    "host=5",  # AttributeError: 'int' object has no attribute 'strip'
    "verbosity='1'",
    "port=0, server_name=5",  # TypeError from the C core, lifespan task left pending
    "port=0, workers='2'",
])
def test_python_api_wrong_type_is_one_line(kwargs):
    code = f"import sys, cdaphne; sys.exit(cdaphne.run('{APP}', lifespan='on', {kwargs}))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=10, stdin=subprocess.DEVNULL)
    assert_one_clear_line(proc, kwargs.split("=")[-2].split()[-1])


def test_access_log_that_cannot_be_opened_with_workers_is_one_line(tmp_path):
    """Each worker printed it, and the supervisor logged their failed boot."""
    path = str(tmp_path / "missing" / "access.log")
    proc = run_cli("-p", "0", "--workers", "2", APP, "--access-log", path, timeout=20)
    assert_one_clear_line(proc, path, "No such file")
