"""run_in_executor on a plain ThreadPoolExecutor (csrc/hop.c's work items):
cdaphne's loop queues a C work item on the executor's own queue instead of
calling submit(), and completes the asyncio future from the worker thread.

Every scenario runs on stock asyncio's loop and on cdaphne's and must
observe the same thing; on cdaphne's, the count of work items queued
(_debug_counters()["hop_items"]) shows whether the C path was taken."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import logging
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import ThreadSensitiveContext, sync_to_async

from cdaphne import _cdaphne
from cdaphne.loop import LibuvEventLoop, new_event_loop

WAIT = 30  # seconds: a bound for anything that must happen, never a timing

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.SelectorEventLoop,
    "cdaphne": new_event_loop,
}


def hop_items() -> int:
    return _cdaphne._debug_counters()["hop_items"]


def on_both(
    scenario: Callable[[asyncio.AbstractEventLoop], Any],
    items: int | None,
    loops: dict[str, Callable[[], asyncio.AbstractEventLoop]] = LOOPS,
) -> Any:
    """Runs scenario(loop) on both loops and checks they observed the same.

    items: how many run_in_executor() calls must have queued a C work item
    on cdaphne's loop (None: at least one).  loops: the two loops' factories
    (LOOPS: stock asyncio's and cdaphne's)."""
    seen = {}
    for name, factory in loops.items():
        loop = factory()
        before = hop_items()
        try:
            seen[name] = scenario(loop)
        finally:
            loop.close()
        queued = hop_items() - before
        if name == "asyncio":
            assert queued == 0
        elif items is None:
            assert queued > 0
        else:
            assert queued == items
    assert seen["cdaphne"] == seen["asyncio"]
    return seen["cdaphne"]


def outcome(fut: asyncio.Future) -> tuple:
    """What a done future holds, comparable across loops."""
    if fut.cancelled():
        return ("cancelled",)
    exc = fut.exception()
    if exc is not None:
        return ("raised", type(exc), exc.args)
    return ("result", fut.result())


def test_one_worker_runs_everything_on_its_one_thread_with_its_thread_locals():
    def scenario(loop):
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        local = threading.local()

        def put(i: int) -> int:
            local.value = i
            return threading.get_ident()

        def get() -> tuple[int, int]:
            return threading.get_ident(), local.value

        async def main():
            idents = {await loop.run_in_executor(executor, put, i) for i in range(20)}
            ident, value = await loop.run_in_executor(executor, get)
            return len(idents), ident in idents, ident != threading.get_ident(), value

        try:
            return loop.run_until_complete(main())
        finally:
            executor.shutdown()

    assert on_both(scenario, items=21) == (1, True, True, 19)


def test_the_worker_sees_its_own_context_not_the_callers():
    # run_in_executor (unlike asyncio.to_thread) does not copy contextvars.
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var")

    def scenario(loop):
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)

        def read_then_set() -> str:
            value = var.get("unset")
            var.set("worker")
            return value

        async def main():
            var.set("caller")
            first = await loop.run_in_executor(executor, read_then_set)
            second = await loop.run_in_executor(executor, read_then_set)
            return first, second, var.get()

        try:
            return loop.run_until_complete(main())
        finally:
            executor.shutdown()

    assert on_both(scenario, items=2) == ("unset", "worker", "caller")


class Stop(BaseException):
    """A BaseException that is neither KeyboardInterrupt nor SystemExit."""


def test_exceptions_reach_the_caller_as_they_do_on_asyncio():
    raised: list[BaseException] = []

    def raise_(exc: BaseException) -> None:
        raised.append(exc)
        raise exc

    def scenario(loop):
        raised.clear()
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=2)

        async def main():
            out = []
            for exc in (
                ValueError("v"),
                Stop("base"),
                concurrent.futures.CancelledError("c"),
                concurrent.futures.InvalidStateError("i"),
                TimeoutError("t"),
            ):
                fut = loop.run_in_executor(executor, raise_, exc)
                try:
                    await fut
                except BaseException as caught:  # noqa: BLE001 - what arrives
                    out.append((type(caught), caught.args, caught is raised[-1]))
                out.append(outcome(fut))
            return out

        try:
            return loop.run_until_complete(asyncio.wait_for(main(), WAIT))
        finally:
            executor.shutdown()

    out = on_both(scenario, items=5)
    assert out[0] == (ValueError, ("v",), True)
    assert out[2] == (Stop, ("base",), True)
    assert out[4][0] is asyncio.CancelledError


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_and_system_exit_propagate_out_of_the_loop(exc_type):
    def raise_() -> None:
        raise exc_type("out")

    def scenario(loop):
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)

        async def main():
            await loop.run_in_executor(executor, raise_)

        try:
            loop.run_until_complete(main())
        except exc_type as exc:
            return type(exc), exc.args
        finally:
            executor.shutdown()

    assert on_both(scenario, items=1) == (exc_type, ("out",))


def test_stop_iteration_is_what_asyncio_futures_make_of_it():
    # asyncio.Future.set_exception(StopIteration): 3.13 stores a
    # RuntimeError caused by it; 3.11 raises TypeError, which the loop
    # reports through its exception handler, and the future stays pending.
    def scenario(loop):
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        errors: list[dict] = []
        loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))

        async def main():
            fut = loop.run_in_executor(executor, next, iter(()))
            while not fut.done() and not errors:
                await asyncio.sleep(0.005)
            if fut.done():
                exc = fut.exception()
                return "done", type(exc), type(exc.__cause__), len(errors)
            return "pending", type(errors[0]["exception"]), len(errors)

        try:
            return loop.run_until_complete(asyncio.wait_for(main(), WAIT))
        finally:
            executor.shutdown()

    # Which of the two depends on the patch release (3.12.1: TypeError).
    assert on_both(scenario, items=1) in (
        ("done", RuntimeError, StopIteration, 0),
        ("pending", TypeError, 1),
    )


def _blocked_executor(loop, executor=None):
    """An executor whose only worker waits on a gate: later work queues."""
    if executor is None:
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    gate, started = threading.Event(), threading.Event()

    def busy() -> str:
        started.set()
        assert gate.wait(WAIT)
        return "busy done"

    fut = loop.run_in_executor(executor, busy)
    assert started.wait(WAIT)
    return executor, gate, fut


def test_cancelling_before_the_worker_starts_never_calls_the_function():
    def scenario(loop):
        ran: list[int] = []

        async def main():
            executor, gate, busy = _blocked_executor(loop)
            queued = loop.run_in_executor(executor, ran.append, 1)
            queued.cancel()
            await asyncio.sleep(0)  # The cancel reaches the work item.
            gate.set()
            await busy
            # The worker went past the cancelled item: the next one runs.
            after = await loop.run_in_executor(executor, ran.append, 2)
            executor.shutdown()
            return outcome(queued), after, list(ran)

        return loop.run_until_complete(asyncio.wait_for(main(), WAIT))

    assert on_both(scenario, items=3) == (("cancelled",), None, [2])


def test_cancelling_while_it_runs_lets_it_finish_and_drops_the_result():
    def scenario(loop):
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        errors: list[dict] = []
        loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
        gate, started, finished = threading.Event(), threading.Event(), threading.Event()

        def work() -> str:
            started.set()
            assert gate.wait(WAIT)
            finished.set()
            return "result"

        async def main():
            running = loop.run_in_executor(executor, work)
            while not started.is_set():
                await asyncio.sleep(0.005)
            running.cancel()
            gate.set()
            # The next call on the one worker comes after the first.
            await loop.run_in_executor(executor, int)
            for _ in range(3):
                await asyncio.sleep(0)
            return outcome(running), finished.is_set(), errors

        try:
            return loop.run_until_complete(asyncio.wait_for(main(), WAIT))
        finally:
            executor.shutdown()

    assert on_both(scenario, items=2) == (("cancelled",), True, [])


def test_shutdown_cancelling_queued_work_cancels_the_asyncio_futures():
    def scenario(loop):
        ran: list[int] = []

        async def main():
            executor, gate, busy = _blocked_executor(loop)
            queued = [loop.run_in_executor(executor, ran.append, i) for i in range(3)]
            executor.shutdown(wait=False, cancel_futures=True)
            gate.set()
            results = await asyncio.gather(busy, *queued, return_exceptions=True)
            late = None
            try:
                loop.run_in_executor(executor, ran.append, 9)
            except RuntimeError as exc:
                late = str(exc)
            executor.shutdown(wait=True)
            return (
                [r if isinstance(r, str) else type(r) for r in results],
                [outcome(f) for f in queued],
                late,
                ran,
            )

        return loop.run_until_complete(asyncio.wait_for(main(), WAIT))

    results, outcomes, late, ran = on_both(scenario, items=4)
    assert results == ["busy done"] + [asyncio.CancelledError] * 3
    assert outcomes == [("cancelled",)] * 3
    assert late == "cannot schedule new futures after shutdown"
    assert ran == []


def test_submit_after_shutdown_raises_the_executors_own_error():
    def scenario(loop):
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        executor.shutdown()

        async def main():
            with pytest.raises(RuntimeError) as info:
                loop.run_in_executor(executor, int)
            return str(info.value)

        return loop.run_until_complete(main())

    assert on_both(scenario, items=0) == "cannot schedule new futures after shutdown"


def test_a_failing_initializer_breaks_the_pool_for_queued_and_later_work(caplog):
    def fail() -> None:
        raise OSError("no init")

    def scenario(loop):
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, initializer=fail)
        ran: list[int] = []

        async def main():
            first = loop.run_in_executor(executor, ran.append, 1)
            with pytest.raises(concurrent.futures.BrokenExecutor) as queued:
                await first
            with pytest.raises(concurrent.futures.BrokenExecutor) as later:
                loop.run_in_executor(executor, ran.append, 2)
            executor.shutdown()
            return (
                type(queued.value).__name__,
                queued.value.args,
                type(later.value).__name__,
                later.value.args,
                ran,
            )

        with caplog.at_level(logging.CRITICAL, logger="concurrent.futures"):
            return loop.run_until_complete(asyncio.wait_for(main(), WAIT))

    got = on_both(scenario, items=1)
    assert got[0] == got[2] == "BrokenThreadPool"
    assert got[4] == []
    assert [r.getMessage() for r in caplog.records].count("Exception in initializer:") == 2


class RecordingExecutor(concurrent.futures.ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.calls: list[Any] = []

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        self.calls.append(fn)
        return super().submit(fn, *args, **kwargs)


def test_a_subclass_overriding_submit_gets_its_submit_called():
    def scenario(loop):
        executor = RecordingExecutor()
        try:
            result = loop.run_until_complete(loop.run_in_executor(executor, abs, -3))
            return result, executor.calls
        finally:
            executor.shutdown()

    assert on_both(scenario, items=0) == (3, [abs])


def test_a_submit_patched_on_the_class_or_the_instance_is_called(monkeypatch):
    calls: list[str] = []
    original = concurrent.futures.ThreadPoolExecutor.submit

    @functools.wraps(original)
    def traced(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append("class")
        return original(self, fn, *args, **kwargs)

    def scenario(loop):
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        try:
            with monkeypatch.context() as m:
                m.setattr(concurrent.futures.ThreadPoolExecutor, "submit", traced)
                first = loop.run_until_complete(loop.run_in_executor(executor, abs, -1))
            # The patch is gone: the C path again.
            plain = loop.run_until_complete(loop.run_in_executor(executor, abs, -2))

            def mine(fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
                calls.append("instance")
                return original(executor, fn, *args, **kwargs)

            executor.submit = mine  # type: ignore[method-assign]
            second = loop.run_until_complete(loop.run_in_executor(executor, abs, -3))
            return first, plain, second, calls[:]
        finally:
            calls.clear()
            executor.shutdown()

    assert on_both(scenario, items=1) == (1, 2, 3, ["class", "instance"])


def test_debug_mode_keeps_the_executors_submit():
    # Debug mode runs BaseEventLoop.run_in_executor itself (its checks).
    def scenario(loop):
        loop.set_debug(True)
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        try:
            return loop.run_until_complete(loop.run_in_executor(executor, abs, -5))
        finally:
            executor.shutdown()

    assert on_both(scenario, items=0) == 5


def test_a_submit_patched_before_the_first_run_in_executor_is_never_bypassed():
    # The class's submit is captured when run_in_executor first meets the
    # module: a patch made before then must not be taken for the original.
    code = textwrap.dedent(
        """
        import concurrent.futures, functools
        from cdaphne import _cdaphne
        from cdaphne.loop import LibuvEventLoop, new_event_loop

        calls = []
        original = concurrent.futures.ThreadPoolExecutor.submit

        @functools.wraps(original)
        def traced(self, fn, /, *args, **kwargs):
            calls.append(fn)
            return original(self, fn, *args, **kwargs)

        concurrent.futures.ThreadPoolExecutor.submit = traced
        loop = new_event_loop()
        ex = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        assert loop.run_until_complete(loop.run_in_executor(ex, abs, -1)) == 1
        concurrent.futures.ThreadPoolExecutor.submit = original
        assert loop.run_until_complete(loop.run_in_executor(ex, abs, -2)) == 2
        ex.shutdown()
        loop.close()
        print(calls == [abs], _cdaphne._debug_counters()["hop_items"])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT, check=True
    )
    assert out.stdout.split() == ["True", "0"]


def test_closing_the_loop_while_work_runs_drops_its_result(caplog):
    def scenario(loop):
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        gate, started = threading.Event(), threading.Event()

        def work() -> str:
            started.set()
            assert gate.wait(WAIT)
            return "late"

        async def main():
            return loop.run_in_executor(executor, work)

        fut = loop.run_until_complete(main())
        assert started.wait(WAIT)
        loop.close()
        with caplog.at_level(logging.DEBUG):
            gate.set()
            executor.shutdown(wait=True)
        return fut.done(), [r.getMessage() for r in caplog.records]

    assert on_both(scenario, items=1) == (False, [])


def test_sync_to_async_in_both_thread_modes_and_a_thread_sensitive_context():
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var")

    def read_and_set(tag: str) -> tuple[str, int]:
        value = var.get("unset")
        var.set(tag)
        return value, threading.get_ident()

    def fail() -> None:
        raise ValueError("in thread")

    def scenario(loop):
        async def main():
            loop_thread = threading.get_ident()
            async with ThreadSensitiveContext():
                var.set("loop")
                a, t1 = await sync_to_async(read_and_set)("sensitive")
                b = var.get()
                _, t2 = await sync_to_async(read_and_set)("again")
                with pytest.raises(ValueError, match="in thread"):
                    await sync_to_async(fail)()
            c, t3 = await sync_to_async(read_and_set, thread_sensitive=False)("free")
            return a, b, var.get(), c, t1 == t2, loop_thread not in (t1, t3)

        try:
            return loop.run_until_complete(asyncio.wait_for(main(), WAIT))
        finally:
            loop.run_until_complete(loop.shutdown_default_executor())

    # Four calls, each queued as a work item (the context's executor is a
    # ThreadPoolExecutor of one worker; thread_sensitive=False: the loop's).
    assert on_both(scenario, items=4) == ("loop", "sensitive", "free", "again", True, True)


def test_many_concurrent_hops_with_some_cancelled():
    n = 2000

    def scenario(loop):
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=4)

        async def main():
            futs = [loop.run_in_executor(executor, divmod, i, 7) for i in range(n)]
            for f in futs[::9]:
                f.cancel()
            results = await asyncio.gather(*futs, return_exceptions=True)
            return [r if isinstance(r, tuple) else type(r) for r in results]

        try:
            return loop.run_until_complete(asyncio.wait_for(main(), WAIT))
        finally:
            executor.shutdown()

    results = on_both(scenario, items=n)
    assert results == [asyncio.CancelledError if i % 9 == 0 else divmod(i, 7) for i in range(n)]


def test_hops_from_many_loop_threads_at_once():
    # Several loops, each in its own thread, share one executor.
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=3)
    before = hop_items()

    def one_loop(k: int) -> list[int]:
        loop = new_event_loop()

        async def main():
            return [await loop.run_in_executor(executor, abs, -i - k) for i in range(200)]

        try:
            return loop.run_until_complete(asyncio.wait_for(main(), WAIT))
        finally:
            loop.close()

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as runners:
        got = list(runners.map(one_loop, range(4)))
    executor.shutdown()
    assert got == [[i + k for i in range(200)] for k in range(4)]
    assert hop_items() - before == 800


def test_the_work_item_stands_for_its_future_to_the_executor():
    # What ThreadPoolExecutor itself does with a queued item: .future's
    # cancel() (shutdown) and set_exception() (a failed initializer).
    loop = new_event_loop()
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:

        async def main():
            _, gate, busy = _blocked_executor(loop, executor)
            a = loop.run_in_executor(executor, int)
            b = loop.run_in_executor(executor, int)
            item_a, item_b = executor._work_queue.get_nowait(), executor._work_queue.get_nowait()
            assert type(item_a).__name__ == "_HopItem" and item_a.future is item_a
            assert item_a.future.cancel() is True
            assert item_a.future.cancel() is True  # As a cancelled Future.
            with pytest.raises(concurrent.futures.InvalidStateError):
                item_a.future.set_exception(OSError("late"))
            item_b.future.set_exception(OSError("broken"))
            assert item_b.future.cancel() is False  # Finished.
            item_a.run()  # Skipped: cancelled.
            item_b.run()
            gate.set()
            assert await busy == "busy done"
            with pytest.raises(asyncio.CancelledError):
                await a
            with pytest.raises(OSError, match="broken"):
                await b

        loop.run_until_complete(asyncio.wait_for(main(), WAIT))
    finally:
        executor.shutdown()
        loop.close()


# _adjust_thread_count() after a queued item: hop.c answers it in C (the
# idle semaphore's count, the pool's size) while the executor, Semaphore,
# Condition and lock are the originals; "hop_adjusts" counts those.


def hop_adjusts() -> int:
    return _cdaphne._debug_counters()["hop_adjusts"]


def _wait_idle(executor: concurrent.futures.ThreadPoolExecutor, count: int) -> None:
    """Waits until count workers have said they are idle (the semaphore)."""
    for _ in range(WAIT * 1000):
        if executor._idle_semaphore._value >= count:
            return
        threading.Event().wait(0.001)
    raise AssertionError(f"workers not idle: {executor._idle_semaphore._value}")


def test_the_idle_semaphore_and_the_pool_size_are_the_executors_own():
    adjusts: dict[str, int] = {}

    def scenario(loop):
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=3)
        before = hop_adjusts()

        async def one_by_one():
            seen = []
            for i in range(10):
                fut = loop.run_in_executor(executor, abs, -i)
                if i > 0:  # The first starts the thread, which may go idle.
                    seen.append((executor._idle_semaphore._value, len(executor._threads)))
                assert await fut == i
                _wait_idle(executor, 1)
            return seen

        async def burst():
            gate = threading.Event()
            futs = [loop.run_in_executor(executor, gate.wait, WAIT) for _ in range(6)]
            seen = (executor._idle_semaphore._value, len(executor._threads))
            gate.set()
            assert await asyncio.gather(*futs) == [True] * 6
            return seen

        try:
            first = loop.run_until_complete(one_by_one())
            second = loop.run_until_complete(burst())
            adjusts[type(loop).__module__] = hop_adjusts() - before
            return first, second
        finally:
            executor.shutdown()

    first, second = on_both(scenario, items=16)
    # One thread serves the calls one by one; each takes the idle count.
    assert first == [(0, 1)] * 9
    # Six at once: the idle one takes the first, two more threads start.
    assert second == (0, 3)
    # In C: 9 of the 10 (the first starts the thread) and the burst's
    # first and its last three (the pool full); not the two thread starts.
    assert adjusts == {"asyncio.unix_events": 0, "cdaphne.loop": 13}


def test_a_semaphore_held_by_another_thread_is_waited_for():
    # release() in another thread holds the condition while it changes
    # the count: reading the count then would lose its update.
    def scenario(loop):
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        sem = executor._idle_semaphore
        entered, gate = threading.Event(), threading.Event()

        def slow_release() -> None:
            with sem._cond:
                entered.set()
                value = sem._value
                threading.Event().wait(0.05)  # Let the loop thread run.
                sem._value = value + 1

        try:
            # The one worker is busy (it cannot release the count itself).
            busy = loop.run_in_executor(executor, gate.wait, WAIT)
            other = threading.Thread(target=slow_release)
            other.start()
            assert entered.wait(WAIT)
            before = hop_adjusts()
            fut = loop.run_in_executor(executor, abs, -2)
            seen = hop_adjusts() - before
            other.join(WAIT)
            seen = seen, sem._value  # Before the busy worker goes idle.
            gate.set()
            return loop.run_until_complete(asyncio.gather(busy, fut)), seen
        finally:
            executor.shutdown()

    # The call waited for the lock (in Python), then took the released count.
    assert on_both(scenario, items=2) == ([True, 2], (0, 0))  # (not in C, the count)


def test_a_patched_semaphore_acquire_or_adjust_thread_count_is_called(monkeypatch):
    calls: list[str] = []
    acquire = threading.Semaphore.acquire
    adjust = concurrent.futures.ThreadPoolExecutor._adjust_thread_count

    def traced_acquire(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append("acquire")
        return acquire(self, *args, **kwargs)

    def scenario(loop):
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        try:
            assert loop.run_until_complete(loop.run_in_executor(executor, abs, -1)) == 1
            _wait_idle(executor, 1)
            with monkeypatch.context() as m:
                m.setattr(threading.Semaphore, "acquire", traced_acquire)
                assert loop.run_until_complete(loop.run_in_executor(executor, abs, -2)) == 2
            _wait_idle(executor, 1)

            def mine() -> None:
                calls.append("adjust")
                adjust(executor)

            executor._adjust_thread_count = mine  # type: ignore[method-assign]
            assert loop.run_until_complete(loop.run_in_executor(executor, abs, -3)) == 3
            return calls[:]
        finally:
            calls.clear()
            executor.shutdown()

    assert on_both(scenario, items=3) == ["acquire", "adjust"]


@pytest.mark.parametrize("method", ["_write_to_self", "call_soon_threadsafe"])
def test_an_overridden_wake_up_is_called_for_every_completion(method):
    # asyncio completes run_in_executor's future from the worker thread
    # with call_soon_threadsafe, which ends with _write_to_self: a loop that
    # replaces either (to count, or to wake something of its own) sees
    # every completion.  cdaphne's work items woke the loop in C, past both.
    def scenario(loop):
        calls = []
        original = getattr(loop, method)

        def wrapper(*args, **kwargs):
            calls.append(threading.current_thread().name)
            return original(*args, **kwargs)

        setattr(loop, method, wrapper)
        executor = concurrent.futures.ThreadPoolExecutor(2)

        async def main():
            return await asyncio.gather(*(loop.run_in_executor(executor, abs, -i)
                                          for i in range(5)))

        try:
            result = loop.run_until_complete(main())
        finally:
            executor.shutdown()
        # Once per completion, from the worker, or from the loop's thread
        # when the work was done before its callback was added.
        return result, len(calls)

    assert on_both(scenario, items=0) == ([0, 1, 2, 3, 4], 5)


def test_a_call_soon_threadsafe_set_after_a_hop_and_deleted_is_seen_each_time():
    # cdaphne's loop remembers that no instance attribute replaces
    # call_soon_threadsafe until the loop's __dict__ changes: an attribute
    # set after a hop took the C path must be called, and once deleted the
    # C path is taken again.
    def scenario(loop):
        calls = []
        original = loop.call_soon_threadsafe

        def wrapper(*args, **kwargs):
            calls.append(threading.current_thread().name)
            return original(*args, **kwargs)

        executor = concurrent.futures.ThreadPoolExecutor(1)
        try:
            seen = [loop.run_until_complete(loop.run_in_executor(executor, abs, -1))]
            loop.call_soon_threadsafe = wrapper  # type: ignore[method-assign]
            seen.append(loop.run_until_complete(loop.run_in_executor(executor, abs, -2)))
            seen.append(len(calls))
            del loop.call_soon_threadsafe
            seen.append(loop.run_until_complete(loop.run_in_executor(executor, abs, -3)))
            seen.append(len(calls))
            return seen
        finally:
            executor.shutdown()

    assert on_both(scenario, items=2) == [1, 2, 1, 3, 1]


def test_a_subclass_overriding_call_soon_threadsafe_sees_every_completion():
    calls = []

    def subclass(base: type) -> type:
        class Counting(base):  # type: ignore[misc,valid-type]
            def call_soon_threadsafe(self, *args, **kwargs):
                calls.append(threading.current_thread().name)
                return super().call_soon_threadsafe(*args, **kwargs)

        return Counting

    def scenario(loop):
        executor = concurrent.futures.ThreadPoolExecutor(2)

        async def main():
            return await asyncio.gather(*(loop.run_in_executor(executor, abs, -i)
                                          for i in range(5)))

        try:
            return loop.run_until_complete(main()), len(calls)
        finally:
            calls.clear()
            executor.shutdown()

    classes = {"asyncio": subclass(asyncio.SelectorEventLoop), "cdaphne": subclass(LibuvEventLoop)}
    assert on_both(scenario, items=0, loops=classes) == ([0, 1, 2, 3, 4], 5)
