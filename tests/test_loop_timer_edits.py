"""Timers whose handles Python code edits in place while they are in
loop._scheduled: cdaphne's loop must run them as asyncio's does."""

from __future__ import annotations

import asyncio
import heapq

from .test_loop_sched import on_both


def clocked(loop) -> list[float]:
    """loop.time() is now[0] from here on, which step() advances."""
    now = [1000.0]
    loop.time = lambda: now[0]
    return now


def step(loop, now: list[float], advance: float) -> None:
    """One _run_once of a loop whose time is now[0], advanced first."""
    now[0] += advance
    loop.call_soon(int)  # the step does not block
    loop._run_once()


def test_a_when_changed_in_place_and_reheapified_is_the_one_used():
    def scenario(loop):
        out = []
        loop.time = lambda: 1000.0
        first = loop.call_at(1001.0, out.append, "first")
        loop.call_at(1010.0, out.append, "second")
        first._when = 1005.0  # later, still the earliest: heapify moves nothing
        heapq.heapify(loop._scheduled)
        loop.time = lambda: 1002.0
        loop.call_soon(int)  # the step does not block
        loop._run_once()
        ran_early = list(out)
        loop.time = lambda: 1006.0
        loop.call_soon(int)
        loop._run_once()
        loop._scheduled.clear()
        return ran_early, out

    assert on_both(scenario) == ([], ["first"])


def test_timers_pushed_and_popped_by_python_code_in_any_order_match_asyncio():
    # Python code (heappush of a TimerHandle subclass, heappop, remove +
    # heapify, a new list, clear) between C pushes, cancels and steps.
    import random

    class MyTimer(asyncio.TimerHandle):
        pass

    def scenario(loop, seed):
        rnd = random.Random(seed)
        out = []
        now = clocked(loop)
        handles = []
        for i in range(40):
            op = rnd.random()
            if op < 0.4:
                w = now[0] + rnd.choice([0, 0.5, 1, 2, 3, rnd.random() * 5])
                handles.append(loop.call_at(w, out.append, len(handles)))
            elif op < 0.5 and handles:
                rnd.choice(handles).cancel()
            elif op < 0.55:
                t = MyTimer(now[0] + rnd.random() * 3, out.append, (f"sub{i}",), loop)
                heapq.heappush(loop._scheduled, t)
            elif op < 0.6 and loop._scheduled:
                heapq.heappop(loop._scheduled)._scheduled = False
            elif op < 0.65 and loop._scheduled:
                loop._scheduled.remove(rnd.choice(loop._scheduled))
                heapq.heapify(loop._scheduled)
            elif op < 0.68:
                loop._scheduled = list(loop._scheduled)
            elif op < 0.7:
                loop._scheduled.clear()
            elif op < 0.85:
                step(loop, now, rnd.choice([0, 0.5, 1, 2]))
            else:
                loop.call_soon(out.append, f"soon{i}")
        for _ in range(4):
            step(loop, now, 2)
        left = sorted(h.when() for h in loop._scheduled)
        loop._scheduled.clear()
        return out, left, loop._timer_cancelled_count

    for seed in range(200):
        on_both(lambda loop, seed=seed: scenario(loop, seed))


def test_a_when_changed_in_place_anywhere_in_the_heap_is_seen_as_asyncio_sees_it():
    # An app sets a scheduled timer's _when (no heapify): asyncio's heapq
    # compares the timers' _when as they are at each push and pop, so the
    # new value steers the sifts that meet that timer.  cdaphne kept each
    # timer's _when from its push but the first one's: timers ran in
    # another order.
    import random

    def scenario(loop, seed):
        now = clocked(loop)
        rnd, out = random.Random(seed), []
        for i in range(60):
            op = rnd.random()
            if op < 0.45:
                loop.call_at(now[0] + rnd.random() * 5, out.append, i)
            elif op < 0.7 and loop._scheduled:
                rnd.choice(loop._scheduled)._when = now[0] + rnd.random() * 5
            elif op < 0.9:
                step(loop, now, rnd.choice([0, 0.5, 1]))
            else:
                loop.call_soon(out.append, f"soon{i}")
        for _ in range(8):
            step(loop, now, 2)
        left = [h.when() for h in loop._scheduled]
        loop._scheduled.clear()
        return out, left

    for seed in range(200):
        on_both(lambda loop, seed=seed: scenario(loop, seed))
