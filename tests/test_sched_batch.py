"""--sched-batch: a real server's loop runs under SCHED_BATCH while a thread
hop is out and under the default policy otherwise, the executor threads it
starts meanwhile inherit SCHED_BATCH, unless told not to; a policy the
operator chose stays."""

from __future__ import annotations

import os
import sys
import time

import httpx
import pytest

from .serverproc import ServerProcess

APP = "tests.apps.schedpolicy:app"
THREADS = ("loop", "loop_started", "loop_in_hop", "executor", "sync_to_async", "worker_started")
HOPPED = THREADS[2:]  # while a hop is out, or on a thread a hop's worker started

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


def policies(proc: ServerProcess, requests: int = 1) -> list[dict[str, int]]:
    """What the app reports, one request after another."""
    try:
        got = []
        for _ in range(requests):
            r = httpx.get(proc.url("/"), timeout=10)
            assert r.status_code == 200, r.text
            got.append({k: r.json()[k] for k in THREADS})
        return got
    finally:
        proc.stop()


def batch_while_hopping() -> dict[str, int]:
    """The app's report with the policy on: the loop under the default
    policy while no hop is out, SCHED_BATCH where one is."""
    return {**dict.fromkeys(THREADS[:2], os.SCHED_OTHER), **dict.fromkeys(HOPPED, os.SCHED_BATCH)}


def test_the_loop_runs_under_sched_batch_while_a_hop_is_out() -> None:
    want = batch_while_hopping()
    # The second request finds the loop back under the default policy: it
    # slept with no hop out in between.
    assert policies(started_as("SCHED_OTHER"), requests=2) == [want, want]


def test_the_loop_leaves_sched_batch_after_hops_that_raise_or_are_cancelled() -> None:
    proc = started_as("SCHED_OTHER")
    try:
        r = httpx.get(proc.url("/odd"), timeout=10)
        assert r.status_code == 200, r.text
        assert r.json() == {"loop": os.SCHED_OTHER}
    finally:
        proc.stop()


def test_a_long_hop_does_not_hold_the_policy() -> None:
    # A hop that neither starts nor ends for a while (a slow view, a long
    # job) has nothing to gain from it: the loop goes back to the default
    # policy, so that the network wakes it at once on a busy core again.
    proc = started_as("SCHED_OTHER")
    try:
        got = [httpx.get(proc.url("/long"), timeout=10).json()]
        time.sleep(0.1)  # the hop is still out, and has been for 100 ms
        got.append(httpx.get(proc.url("/loop"), timeout=10).json())
        assert got == [{"loop": os.SCHED_BATCH}, {"loop": os.SCHED_OTHER}]
    finally:
        proc.stop()


def test_sched_batch_false_keeps_the_default_policy() -> None:
    got = policies(started_as("SCHED_OTHER", "--sched-batch", "false"))
    assert got == [dict.fromkeys(THREADS, os.SCHED_OTHER)]


def test_workers_do_as_a_server_alone() -> None:
    # Under the policy all the time, workers sharing a listening socket raced
    # to accept and the running one took every one-at-a-time connection
    # (tests/test_workers.py); a worker sleeps under the default policy now.
    got = policies(started_as("SCHED_OTHER", "--workers", "2"), requests=4)
    assert got == [batch_while_hopping()] * 4


def test_a_policy_the_operator_chose_stays() -> None:
    # SCHED_IDLE (chrt -i), which the server must not turn into SCHED_BATCH.
    assert policies(started_as("SCHED_IDLE")) == [dict.fromkeys(THREADS, os.SCHED_IDLE)]


def test_sched_batch_flag_takes_a_bool_only() -> None:
    proc = ServerProcess(["-p", "0", "--sched-batch", "maybe", APP])
    assert proc.wait() == 2
    assert "--sched-batch: 'maybe' is not true or false" in proc.log_tail()
