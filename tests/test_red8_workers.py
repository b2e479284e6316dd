"""Red team, session 8: apps that end their process from inside a
request — SystemExit, KeyboardInterrupt, os._exit(), a segfault — alone
and under --workers."""

from __future__ import annotations

import httpx
import psutil
import pytest

from .conftest import wait_until

APP = "tests.apps.red8_workers:app"


def get(proc, path: str) -> httpx.Response:
    return httpx.get(proc.url(path), timeout=10, headers={"connection": "close"})


@pytest.mark.parametrize("path", ["/sys_exit?c=3", "/sys_exit_late?c=3"])
def test_system_exit_from_the_app_answers_500_then_ends_the_server(serve, path):
    """SystemExit from the app's first step (run eagerly inside Task() on
    3.12+) was logged as "SystemError: <built-in method close of coroutine
    object> returned a result with an exception set" and the server went
    on, while the same SystemExit after an await ends the server with its
    code (asyncio's rule: it leaves the loop).  Both now answer 500 and
    end the server with code 3."""
    proc = serve(APP)
    proc.expected_exit = None
    assert get(proc, path).status_code == 500
    assert proc.wait(15) == 3
    assert "SystemError" not in proc.log
    assert "Exception inside application" in proc.log


def test_keyboard_interrupt_from_the_first_step_or_later_ends_the_server_alike(serve):
    codes = []
    for path in ("/kbint", "/kbint_late"):
        proc = serve(APP)
        proc.expected_exit = None
        assert get(proc, path).status_code == 500
        codes.append(proc.wait(15))
        assert "SystemError" not in proc.log
    assert codes[0] == codes[1] != 0


def workers(proc) -> set[int]:
    return {c.pid for c in psutil.Process(proc.proc.pid).children()}


@pytest.mark.parametrize(
    "path, died",
    [
        ("/os_exit?c=0", "exit status 0"),
        ("/os_exit?c=3", "exit status 3"),
        ("/segv", r"killed by signal 11 \(SIGSEGV\)"),
        ("/sys_exit?c=4", "exit status 4"),
        ("/sys_exit_late?c=5", "exit status 5"),
    ],
)
def test_a_worker_that_dies_mid_request_is_replaced_and_the_other_serves(serve, path, died):
    proc = serve(APP, "--workers", "2", "--ping-interval", "0")
    wait_until(lambda: len(workers(proc)) == 2, timeout=20)
    before = workers(proc)
    try:
        r = get(proc, path)
        assert r.status_code == 500  # SystemExit: answered before the exit
    except httpx.HTTPError:
        pass  # os._exit / segfault mid-response: the client sees it cut
    m = proc.wait_log(rf"Worker (\d+) died: {died}", timeout=20)[0]
    victim = int(m.group(1))
    assert victim in before
    # The survivor serves while the victim is replaced.
    (survivor,) = before - {victim}
    seen = {int(get(proc, "/").content) for _ in range(10)}
    assert survivor in seen
    wait_until(lambda: len(workers(proc)) == 2 and victim not in workers(proc), timeout=20)
    new = workers(proc) - {survivor}
    wait_until(
        lambda: {int(get(proc, "/").content) for _ in range(20)} == {survivor} | new, timeout=20
    )


def test_an_app_returning_no_coroutine_gets_500_and_its_own_error_logged(serve):
    """The error path called 42.close() with Task()'s TypeError still set:
    the log showed "'int' object has no attribute 'close'" instead."""
    proc = serve("tests.apps.red8_workers:not_a_coroutine")
    for _ in range(2):
        assert get(proc, "/").status_code == 500
    proc.wait_log("a coroutine was expected, got 42", count=2)
    assert "has no attribute 'close'" not in proc.log
    assert "SystemError" not in proc.log


@pytest.mark.parametrize("path", ["/sys_exit?c=3", "/kbint"])
def test_an_exit_from_the_app_s_first_step_is_logged_once(serve, path):
    """On 3.12+ the eager first step's SystemExit leaves Task() with the
    exception set on a task nobody held: besides "Exception inside
    application", asyncio logged "Task exception was never retrieved"."""
    proc = serve(APP)
    proc.expected_exit = None
    assert get(proc, path).status_code == 500
    assert proc.wait(15) != 0
    assert proc.log.count("Exception inside application") == 1, proc.log_tail()
    assert "never retrieved" not in proc.log, proc.log_tail()
