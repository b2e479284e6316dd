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


def started_as(policy: str, *argv: str) -> ServerProcess:
    """The server started under `chrt -<policy> 0`, whatever the test runs under."""
    cmd = ["chrt", f"-{policy}", "0", sys.executable, "-m", "cdaphne"]
    proc = ServerProcess(["-p", "0", *argv, APP], cmd=cmd)
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
    assert policies(started_as("o")) == dict.fromkeys(THREADS, os.SCHED_BATCH)


def test_sched_batch_false_keeps_the_default_policy() -> None:
    got = policies(started_as("o", "--sched-batch", "false"))
    assert got == dict.fromkeys(THREADS, os.SCHED_OTHER)


def test_a_policy_the_operator_chose_stays() -> None:
    # chrt -i: SCHED_IDLE, which the server must not turn into SCHED_BATCH.
    assert policies(started_as("i")) == dict.fromkeys(THREADS, os.SCHED_IDLE)


def test_sched_batch_flag_takes_a_bool_only() -> None:
    proc = ServerProcess(["-p", "0", "--sched-batch", "maybe", APP])
    assert proc.wait() == 2
    assert "--sched-batch: 'maybe' is not true or false" in proc.log_tail()
