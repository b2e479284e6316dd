"""--sched-batch: a real server's threads, and those its apps hop to, run
under SCHED_BATCH unless told not to, and a policy the operator chose stays."""

from __future__ import annotations

import os
import sys

import httpx
import pytest

from .serverproc import ServerProcess

APP = "tests.apps.schedpolicy:app"
THREADS = ("loop", "executor", "sync_to_async", "thread")

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")


# Sets the policy, then becomes the server: Python, not chrt, so that the
# sanitized run's LD_PRELOAD reaches the server (tests/serverproc.py).
LAUNCH = (
    "import os, sys\n"
    "policy = getattr(os, sys.argv[1])\n"
    "os.sched_setscheduler(0, policy, os.sched_param(0))\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'cdaphne', *sys.argv[2:]])\n"
)


def started_as(policy: str, *argv: str) -> ServerProcess:
    """The server started under `policy` (os.SCHED_*), whatever the test runs under."""
    proc = ServerProcess([policy, "-p", "0", *argv, APP], cmd=[sys.executable, "-c", LAUNCH])
    proc.wait_listening()
    return proc


def policies(proc: ServerProcess) -> dict[str, int]:
    try:
        r = httpx.get(proc.url("/"), timeout=10)
        assert r.status_code == 200, r.text
        return {k: r.json()[k] for k in THREADS}
    finally:
        proc.stop()


def test_server_threads_run_under_sched_batch_by_default() -> None:
    assert policies(started_as("SCHED_OTHER")) == dict.fromkeys(THREADS, os.SCHED_BATCH)


def test_sched_batch_false_keeps_the_default_policy() -> None:
    got = policies(started_as("SCHED_OTHER", "--sched-batch", "false"))
    assert got == dict.fromkeys(THREADS, os.SCHED_OTHER)


def test_workers_keep_the_default_policy() -> None:
    # Workers sharing a listening socket race to accept: under SCHED_BATCH
    # the running one took every one-at-a-time connection.
    got = policies(started_as("SCHED_OTHER", "--workers", "2"))
    assert got == dict.fromkeys(THREADS, os.SCHED_OTHER)


def test_a_policy_the_operator_chose_stays() -> None:
    # SCHED_IDLE (chrt -i), which the server must not turn into SCHED_BATCH.
    assert policies(started_as("SCHED_IDLE")) == dict.fromkeys(THREADS, os.SCHED_IDLE)


def test_sched_batch_flag_takes_a_bool_only() -> None:
    proc = ServerProcess(["-p", "0", "--sched-batch", "maybe", APP])
    assert proc.wait() == 2
    assert "--sched-batch: 'maybe' is not true or false" in proc.log_tail()
