"""asyncio micro-benchmark (`aio-micro`): the event loop's own costs.

    python bench/aio_micro.py --loop cdaphne --bench call_soon --duration 1

measures one benchmark on one loop in this process and prints one JSON line
(ops, seconds, ops_per_s, cpu_s).  The runner (`python -m bench --only
aio-micro`) runs every benchmark on stock asyncio and cdaphne's loop (the
project's .venv) and uvloop (the peers' venv), one process per measurement,
alternating the loops, pinned to the server core; ratios are to uvloop.

Every benchmark checks its own result (counts add up, values come back) and
fails rather than report a number for wrong work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

# name -> (title, what one op is)
BENCHES = {
    "call_soon": ("call_soon ping-pong", "callback run by call_soon from a callback"),
    # uvloop runs a call_later under 0.5 ms as a call_soon (no timer, no heap,
    # a Handle that is not a TimerHandle); asyncio's and ours make a timer.
    "call_later": ("call_later(0) batches of 1,000, half cancelled", "timer scheduled"),
    "call_later_1ms": (
        "call_later(0.001) batches of 1,000, half cancelled (a timer on every loop)",
        "timer scheduled",
    ),
    "sleep0": ("Task: await asyncio.sleep(0)", "Task step through the ready queue"),
    "future_switch": ("Task switch: two Tasks hand a future back and forth", "Task wake-up"),
    "create_task": ("create_task + await of a trivial coroutine", "Task created and awaited"),
    "threadsafe_rt": (
        "call_soon_threadsafe round trip (thread -> loop -> thread)",
        "round trip",
    ),
    "threadsafe_stream": (
        "call_soon_threadsafe from a thread, <= 1,000 in flight",
        "callback delivered",
    ),
    "executor_rt": ("await run_in_executor(None, f) round trip", "round trip"),
    "sync_to_async_rt": ("await asgiref sync_to_async(f)() round trip", "round trip"),
    "thread_context_rt": (
        "async with ThreadSensitiveContext(): await sync_to_async(f)()",
        "context with its thread started, used and joined",
    ),
    "future_callback": (
        "create_future + add_done_callback + set_result, the callback run",
        "future resolved and its callback run",
    ),
    "done_future": ("await a done future (control: no loop involved)", "await"),
}
LOOPS = ("asyncio", "uvloop", "cdaphne")
CHECK_EVERY = 1024


class Timer:
    """Counts ops until the deadline; checked every CHECK_EVERY ops."""

    def __init__(self, duration: float) -> None:
        self.ops = 0
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + duration

    def over(self) -> bool:
        return time.perf_counter() >= self.deadline


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "asyncio":
        return asyncio.SelectorEventLoop()
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    if kind == "cdaphne":
        from cdaphne.loop import new_event_loop

        return new_event_loop()
    raise SystemExit(f"unknown loop {kind}")


def b_call_soon(loop: asyncio.AbstractEventLoop, t: Timer) -> int:
    done = loop.create_future()

    def ping() -> None:
        t.ops += 2  # this callback and pong
        if t.ops % CHECK_EVERY == 0 and t.over():
            done.set_result(t.ops)
        else:
            loop.call_soon(pong)

    def pong() -> None:
        loop.call_soon(ping)

    loop.call_soon(ping)
    n: int = loop.run_until_complete(done)
    assert n == t.ops
    return t.ops


def b_call_later(loop: asyncio.AbstractEventLoop, t: Timer) -> int:
    return timer_batches(loop, t, 0, lag=0)


def b_call_later_1ms(loop: asyncio.AbstractEventLoop, t: Timer) -> int:
    # 16 batches in flight (~6 ms of scheduling on this machine): the timers
    # of the oldest are long due, so the loop runs timers, not a 1 ms wait.
    return timer_batches(loop, t, 0.001, lag=16)


def timer_batches(loop: asyncio.AbstractEventLoop, t: Timer, delay: float, lag: int) -> int:
    """Batches of 1,000 call_later(delay), half cancelled; waits (sleep(0)
    steps) until all but `lag` batches' timers have run."""
    ran = [0]

    def cb() -> None:
        ran[0] += 1

    async def main() -> None:
        expected = 0
        while not t.over():
            handles = [loop.call_later(delay, cb) for _ in range(1000)]
            for h in handles[::2]:
                h.cancel()
            expected += 500
            t.ops += 1000
            while ran[0] < expected - 500 * lag:
                await asyncio.sleep(0)
        while ran[0] < expected:
            await asyncio.sleep(0)
        assert ran[0] == expected, (ran[0], expected)

    loop.run_until_complete(main())
    return t.ops


def b_sleep0(loop: asyncio.AbstractEventLoop, t: Timer) -> int:
    async def main() -> None:
        while True:
            await asyncio.sleep(0)
            t.ops += 1
            if t.ops % CHECK_EVERY == 0 and t.over():
                return

    loop.run_until_complete(main())
    return t.ops


def b_future_switch(loop: asyncio.AbstractEventLoop, t: Timer) -> int:
    box: dict[str, asyncio.Future[None] | None] = {"a": None, "b": None}
    state = {"running": True}

    async def player(me: str, other: str) -> None:
        while state["running"]:
            fut = loop.create_future()
            box[me] = fut
            waiter, box[other] = box[other], None
            if waiter is not None:
                waiter.set_result(None)
            await fut
            t.ops += 1
            if t.ops % CHECK_EVERY == 0 and t.over():
                state["running"] = False
                waiter, box[other] = box[other], None
                if waiter is not None:
                    waiter.set_result(None)

    async def main() -> None:
        a = loop.create_task(player("a", "b"))
        b = loop.create_task(player("b", "a"))
        await asyncio.gather(a, b)

    loop.run_until_complete(main())
    return t.ops


def b_create_task(loop: asyncio.AbstractEventLoop, t: Timer) -> int:
    async def leaf(i: int) -> int:
        return i

    async def main() -> None:
        while True:
            assert await loop.create_task(leaf(t.ops)) == t.ops
            t.ops += 1
            if t.ops % CHECK_EVERY == 0 and t.over():
                return

    loop.run_until_complete(main())
    return t.ops


def b_threadsafe_rt(loop: asyncio.AbstractEventLoop, t: Timer) -> int:
    to_thread: queue.SimpleQueue[bool] = queue.SimpleQueue()
    done = loop.create_future()

    def on_loop() -> None:
        t.ops += 1
        if t.ops % CHECK_EVERY == 0 and t.over():
            to_thread.put(False)
            done.set_result(None)
        else:
            to_thread.put(True)

    def worker() -> None:
        while to_thread.get():
            loop.call_soon_threadsafe(on_loop)

    th = threading.Thread(target=worker)
    th.start()
    to_thread.put(True)
    loop.run_until_complete(done)
    th.join()
    return t.ops


def b_threadsafe_stream(loop: asyncio.AbstractEventLoop, t: Timer) -> int:
    window = threading.Semaphore(1000)
    stop = threading.Event()
    sent = [0]
    done = loop.create_future()

    def on_loop() -> None:
        t.ops += 1
        window.release()
        if stop.is_set() and t.ops == sent[0] and not done.done():
            done.set_result(None)

    def worker() -> None:
        while True:
            for _ in range(100):
                window.acquire()
                sent[0] += 1
                loop.call_soon_threadsafe(on_loop)
            if t.over():
                break
        stop.set()
        loop.call_soon_threadsafe(lambda: on_loop_check())

    def on_loop_check() -> None:
        if t.ops == sent[0] and not done.done():
            done.set_result(None)

    th = threading.Thread(target=worker)
    th.start()
    loop.run_until_complete(done)
    th.join()
    assert t.ops == sent[0], (t.ops, sent[0])
    return t.ops


def b_executor_rt(loop: asyncio.AbstractEventLoop, t: Timer) -> int:
    def f(i: int) -> int:
        return i + 1

    async def main() -> None:
        while True:
            assert await loop.run_in_executor(None, f, t.ops) == t.ops + 1
            t.ops += 1
            if t.ops % 128 == 0 and t.over():
                return

    loop.run_until_complete(main())
    return t.ops


def b_sync_to_async_rt(loop: asyncio.AbstractEventLoop, t: Timer) -> int:
    from asgiref.sync import sync_to_async

    def f(i: int) -> int:
        return i + 1

    af = sync_to_async(f)  # thread_sensitive=True: Django's and Channels' default

    async def main() -> None:
        while True:
            assert await af(t.ops) == t.ops + 1
            t.ops += 1
            if t.ops % 128 == 0 and t.over():
                return

    loop.run_until_complete(main())
    return t.ops


def b_thread_context_rt(loop: asyncio.AbstractEventLoop, t: Timer) -> int:
    # What asgiref does around each Django request: a ThreadSensitiveContext
    # whose exit joins the executor thread of its first thread-sensitive
    # call from a thread of its own (two threads started and joined per op).
    from asgiref.sync import ThreadSensitiveContext, sync_to_async

    def f(i: int) -> int:
        return i + 1

    af = sync_to_async(f)

    async def main() -> None:
        while True:
            async with ThreadSensitiveContext():
                assert await af(t.ops) == t.ops + 1
            t.ops += 1
            if t.ops % 16 == 0 and t.over():
                return

    loop.run_until_complete(main())
    return t.ops


def b_future_callback(loop: asyncio.AbstractEventLoop, t: Timer) -> int:
    # What _asyncio asks of the loop by name for each Future: get_debug()
    # (Future.__init__), call_soon(cb, fut, context=ctx) (set_result), and
    # the loop's create_future and step.
    ran = [0]

    def cb(fut: asyncio.Future[int]) -> None:
        ran[0] += fut.result()

    async def main() -> None:
        while True:
            for _ in range(CHECK_EVERY):
                fut = loop.create_future()
                fut.add_done_callback(cb)
                fut.set_result(1)
            t.ops += CHECK_EVERY
            await asyncio.sleep(0)
            if t.over():
                return

    loop.run_until_complete(main())
    assert ran[0] == t.ops, (ran[0], t.ops)
    return t.ops


def b_done_future(loop: asyncio.AbstractEventLoop, t: Timer) -> int:
    async def main() -> None:
        fut = loop.create_future()
        fut.set_result(1)
        while True:
            for _ in range(CHECK_EVERY):
                await fut
            t.ops += CHECK_EVERY
            if t.over():
                return

    loop.run_until_complete(main())
    return t.ops


FUNCS: dict[str, Callable[[asyncio.AbstractEventLoop, Timer], int]] = {
    name: globals()["b_" + name] for name in BENCHES
}


def measure(loop_kind: str, bench: str, duration: float) -> dict[str, Any]:
    loop = new_loop(loop_kind)
    asyncio.set_event_loop(loop)
    try:
        FUNCS[bench](loop, Timer(min(0.2, duration)))  # warm-up (executor threads, caches)
        c0 = time.process_time()
        t = Timer(duration)
        ops = FUNCS[bench](loop, t)
        seconds = time.perf_counter() - t.t0
        cpu = time.process_time() - c0
    finally:
        asyncio.set_event_loop(None)
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
    return {
        "loop": loop_kind,
        "bench": bench,
        "ops": ops,
        "seconds": round(seconds, 4),
        "ops_per_s": ops / seconds,
        "cpu_s": round(cpu, 4),
        "python": sys.version.split()[0],
        "prefix": sys.prefix,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--loop", choices=LOOPS, required=True)
    ap.add_argument("--bench", choices=list(BENCHES), required=True)
    ap.add_argument("--duration", type=float, default=1.0)
    args = ap.parse_args(argv)
    print(json.dumps(measure(args.loop, args.bench, args.duration)), flush=True)
    sys.stdout.flush()
    os._exit(0)  # an executor thread left behind must not hold the exit


if __name__ == "__main__":
    sys.exit(main())
