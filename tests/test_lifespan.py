"""Lifespan edge cases against a real server process."""

from __future__ import annotations

import json
import signal
import socket
import time

import httpx
import pytest
import websocket


def wait_for_file_text(path, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.02)
    raise AssertionError(f"{text!r} never appeared in {path}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_a_startup_that_hangs_stops_the_server(serve, tmp_path, sig):
    """SIGTERM killed the process (exit -15, the app's cleanup never ran) and
    SIGINT was not seen until the startup ended (the loop sleeps in libuv),
    i.e. never: both now cancel the startup and exit 0."""
    marker = tmp_path / "marker"
    proc = serve("tests.apps.lifespan:slow_startup", "--lifespan", "on", listen=0,
                 env={"CDAPHNE_TEST_MARKER": str(marker)})
    wait_for_file_text(marker, "starting")
    proc.send_signal(sig)
    assert proc.wait(timeout=10) == 0, proc.log_tail()
    assert "cancelled" in marker.read_text()
    assert "Stopped during application startup" in proc.log
    assert "Traceback" not in proc.log


def test_startup_failed_without_a_message_logs_no_empty_one(serve):
    """It logged 'Application startup failed: ' (a dangling colon)."""
    proc = serve("tests.apps.lifespan:startup_fails_silently", listen=0)
    assert proc.wait(timeout=10) == 3
    lines = [ln for ln in proc.log.splitlines() if "Application startup failed" in ln]
    assert len(lines) == 1 and lines[0].rstrip().endswith("Application startup failed"), proc.log


def test_shutdown_cancels_an_app_once_and_lets_its_cleanup_finish(serve, tmp_path):
    """With --application-close-timeout 1 the core's close timeout and the
    shutdown both cancelled the app at the same moment: the second cancel
    cut its cleanup short."""
    marker = tmp_path / "marker"
    proc = serve("tests.apps.lifespan:slow_cleanup", "--lifespan", "off",
                 "--application-close-timeout", "1", "--timeout-graceful-shutdown", "0.2",
                 env={"CDAPHNE_TEST_MARKER": str(marker)})
    with socket.create_connection((proc.host, proc.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for_file_text(marker, "entered")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, proc.log_tail()
    assert marker.read_text().split("\n")[1:] == ["cancelled", "cleaned up", ""], proc.log_tail()


def test_a_lifespan_shutdown_that_hangs_is_cancelled_not_destroyed(serve, tmp_path):
    """After the 10 s lifespan shutdown timeout the task was left pending:
    'Task was destroyed but it is pending!' and a GeneratorExit traceback
    ('Exception in lifespan after startup') when the loop closed."""
    marker = tmp_path / "marker"
    proc = serve("tests.apps.lifespan:shutdown_hangs", "--lifespan", "on",
                 env={"CDAPHNE_TEST_MARKER": str(marker)})
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0, proc.log_tail()
    assert "Lifespan shutdown timed out" in proc.log
    assert "Task was destroyed" not in proc.log, proc.log_tail()
    assert "Traceback" not in proc.log, proc.log_tail()
    assert marker.read_text() == "cancelled\n"


def test_timeout_lifespan_shutdown_sets_how_long_the_shutdown_gets(serve, tmp_path):
    """It was a fixed 10 s (uvicorn waits without bound, Hypercorn has
    shutdown_timeout): --timeout-lifespan-shutdown sets it."""
    marker = tmp_path / "marker"
    proc = serve("tests.apps.lifespan:shutdown_hangs", "--lifespan", "on",
                 "--timeout-lifespan-shutdown", "0.5",
                 env={"CDAPHNE_TEST_MARKER": str(marker)})
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=8) == 0, proc.log_tail()
    assert "Lifespan shutdown timed out after 0.5s" in proc.log
    assert "Traceback" not in proc.log, proc.log_tail()
    assert marker.read_text() == "cancelled\n"


def test_shutdown_with_application_close_timeout_0_lets_cleanup_finish(serve, tmp_path):
    """With 0 the shutdown waited 0 s after cancelling: the app's task was
    destroyed pending as the loop closed, its cleanup cut off."""
    marker = tmp_path / "marker"
    proc = serve("tests.apps.lifespan:slow_cleanup", "--lifespan", "off",
                 "--application-close-timeout", "0", "--timeout-graceful-shutdown", "0.2",
                 env={"CDAPHNE_TEST_MARKER": str(marker)})
    with socket.create_connection((proc.host, proc.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for_file_text(marker, "entered")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, proc.log_tail()
    assert "Task was destroyed" not in proc.log, proc.log_tail()
    assert marker.read_text().split("\n")[1:] == ["cancelled", "cleaned up", ""], proc.log_tail()


def test_the_close_timeout_leaves_an_app_already_cancelling_alone(serve, tmp_path):
    """The reverse order: the shutdown cancels the app first, and the core's
    --application-close-timeout, armed when the client left, fires during
    the app's cleanup: it must not cancel it a second time."""
    marker = tmp_path / "marker"
    proc = serve("tests.apps.lifespan:slow_cleanup", "--lifespan", "off",
                 "--application-close-timeout", "2", "--timeout-graceful-shutdown", "0.2",
                 env={"CDAPHNE_TEST_MARKER": str(marker), "CDAPHNE_TEST_CLEANUP": "1.5"})
    with socket.create_connection((proc.host, proc.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for_file_text(marker, "entered")
    time.sleep(0.2)  # the core sees the client leave and arms its close timeout
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0, proc.log_tail()
    assert marker.read_text().split("\n")[1:] == ["cancelled", "cleaned up", ""], proc.log_tail()


@pytest.mark.parametrize(
    "app,flags",
    [
        ("with_state", ("--lifespan", "off")),
        ("raises_on_lifespan", ()),  # auto, and the app refuses lifespan
        ("with_state", ("--lifespan", "on")),
    ],
    ids=["off", "auto-unsupported", "on"],
)
def test_scope_state_is_a_per_connection_copy_with_or_without_lifespan(serve, app, flags):
    """Regression: with lifespan off (or refused by the app) HTTP and
    WebSocket scopes had no "state" key; uvicorn always sets it, a shallow
    copy of the lifespan's dict (empty without lifespan) per request."""
    proc = serve(f"tests.apps.lifespan:{app}", *flags)
    start = {"db": "connected", "counter": 0} if flags[1:] == ("on",) else {}
    for _ in range(2):  # the app's change to its copy stays in it
        data = httpx.get(proc.url("/")).json()
        assert data["has_state"] is True
        assert data["state"] == {**start, "counter": 1}
        ws = websocket.create_connection(f"ws://127.0.0.1:{proc.port}/", timeout=10)
        try:
            data = json.loads(ws.recv())
        finally:
            ws.close()
        assert data["has_state"] is True
        assert data["state"] == {**start, "counter": 1}


@pytest.mark.parametrize("mode", ["auto", "on"])
@pytest.mark.parametrize(
    "what, raised, code",
    [("exit:3", "SystemExit(3)", 3), ("exit:0", "SystemExit(0)", 0),
     ("kbint", "KeyboardInterrupt", 130)],
)
def test_system_exit_or_ctrl_c_in_lifespan_startup_says_so_in_one_line(serve, mode, what,
                                                                       raised, code):
    """SystemExit(3) in startup was logged "ASGI 'lifespan' protocol appears
    unsupported (3)" (mode auto; on: a traceback, "Application startup
    failed: SystemExit: 3" and "Task exception was never retrieved"), and
    KeyboardInterrupt left "--- Logging error ---" at interpreter shutdown.
    Now one line says what the app raised; the exit code is Python's."""
    proc = serve("tests.apps.lifespan:raises_in_lifespan", "--lifespan", mode, listen=0,
                 env={"CDAPHNE_TEST_RAISE": what})
    proc.expected_exit = code
    assert proc.wait(timeout=15) == code, proc.log_tail()
    line = f"The application raised {raised} in lifespan startup: exiting with code {code}"
    assert proc.log.count(line) == 1, proc.log_tail()
    for text in ("Traceback", "Logging error", "unsupported", "never retrieved",
                 "Starting server"):
        assert text not in proc.log, proc.log_tail()


@pytest.mark.parametrize("what, raised, code",
                         [("exit:4", "SystemExit(4)", 4), ("kbint", "KeyboardInterrupt", 130)])
def test_system_exit_or_ctrl_c_in_lifespan_later_stops_the_server_with_its_code(serve, what,
                                                                                raised, code):
    """After startup (the server stops) or at shutdown: the same one line
    and exit code."""
    proc = serve("tests.apps.lifespan:raises_in_lifespan",
                 env={"CDAPHNE_TEST_RAISE": what, "CDAPHNE_TEST_RAISE_AT": "after"})
    proc.expected_exit = code
    assert httpx.get(proc.url("/raise")).status_code == 204
    assert proc.wait(timeout=15) == code, proc.log_tail()
    proc2 = serve("tests.apps.lifespan:raises_in_lifespan",
                  env={"CDAPHNE_TEST_RAISE": what, "CDAPHNE_TEST_RAISE_AT": "shutdown"})
    proc2.expected_exit = code
    assert httpx.get(proc2.url("/")).status_code == 204
    assert proc2.stop() == code, proc2.log_tail()
    for p, when in ((proc, "after startup"), (proc2, "shutdown")):
        line = f"The application raised {raised} in lifespan {when}: exiting with code {code}"
        assert p.log.count(line) == 1, p.log_tail()
        for text in ("Traceback", "Logging error", "never retrieved"):
            assert text not in p.log, p.log_tail()
