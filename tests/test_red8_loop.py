"""Red team, session 8: the loop's C scheduling core against hostile
Python code, compared with asyncio's own loop on the same scenario."""

from __future__ import annotations

import asyncio
import gc

import pytest

from .test_loop_sched import on_both


@pytest.mark.parametrize("cls", ["Handle", "TimerHandle"])
@pytest.mark.parametrize("how", ["ran", "cancelled"])
def test_a_finalizer_patched_on_asyncios_handles_runs_for_handles_the_loop_drops(cls, how):
    """`__del__` patched on asyncio.Handle / TimerHandle runs for every
    handle the loop drops after running or pruning it.  The core's spare
    handles (sched.c handle_release) took them back without a finalizer:
    one __del__ ran in 20."""

    def scenario(loop):
        klass = getattr(asyncio, cls)
        gone = []

        async def main():
            # Spare handles made before the patch.
            for _ in range(20):
                loop.call_soon(print)
                loop.call_later(0, print).cancel()
            await asyncio.sleep(0.01)
            klass.__del__ = lambda self: gone.append(type(self).__name__)
            try:
                for _ in range(20):
                    if cls == "Handle":
                        h = loop.call_soon(int)
                        if how == "cancelled":
                            h.cancel()
                    else:
                        h = loop.call_later(0 if how == "ran" else 10, int)
                        if how == "cancelled":
                            h.cancel()
                    del h
                    await asyncio.sleep(0)
                await asyncio.sleep(0.01)
                gc.collect()
            finally:
                del klass.__del__
            return len([g for g in gone if g in ("Handle", "TimerHandle")]) >= 20

        return loop.run_until_complete(main())

    assert on_both(scenario) is True


EXIT_SCRIPT = """
import asyncio, sys, time, concurrent.futures as cf
from cdaphne.loop import new_event_loop
ex = cf.ThreadPoolExecutor(2)
mode = sys.argv[1]
loop = new_event_loop()
def work(i):
    time.sleep(0.005)
    return [i] * 10
async def main():
    for i in range(200):
        loop.run_in_executor(ex, work, i)
    if mode == "raise":
        raise SystemExit(3)
    await asyncio.sleep(0.02)
try:
    loop.run_until_complete(main())
finally:
    if mode == "close":
        loop.close()
print("exiting", mode, flush=True)
"""


@pytest.mark.parametrize("mode, code", [("close", 0), ("keep", 0), ("raise", 3)])
def test_interpreter_exit_with_executor_work_queued(mode, code):
    """run_in_executor work still queued when the loop closes (or is left
    open, or SystemExit leaves it) and the interpreter exits: the workers
    finish it at exit and complete futures of a closed loop; no crash, no
    error, as with asyncio's loop."""
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, mode], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == code, r.stderr
    assert "Traceback" not in r.stderr and "Fatal" not in r.stderr, r.stderr
