"""Red team, session 8: the loop's C scheduling core against hostile
Python code, compared with asyncio's own loop on the same scenario."""

from __future__ import annotations

import asyncio
import gc

import pytest

from cdaphne.loop import new_event_loop


def on_both(scenario):
    results = []
    for make in (asyncio.SelectorEventLoop, new_event_loop):
        loop = make()
        try:
            results.append(scenario(loop))
        finally:
            loop.close()
    assert results[1] == results[0]
    return results[1]


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
