"""Thread hops of cdaphne's loop: call_soon_threadsafe's uv_async_t wake-up
and run_in_executor's C completion (csrc/hop.c), with asyncio's semantics."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import gc
import itertools
import logging
import os
import signal
import threading
import time

import pytest
from asgiref.sync import ThreadSensitiveContext, async_to_sync, sync_to_async

from cdaphne.loop import new_event_loop


@pytest.fixture
def loop():
    loop = new_event_loop()
    yield loop
    loop.close()


class RecordingExecutor(concurrent.futures.ThreadPoolExecutor):
    """A thread pool that keeps the concurrent futures it hands out."""

    def __init__(self, workers: int = 1) -> None:
        super().__init__(max_workers=workers)
        self.futures: list[concurrent.futures.Future] = []

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        fut = super().submit(fn, *args, **kwargs)
        self.futures.append(fut)
        return fut


def _live_hops() -> int:
    return sum(type(o).__name__ in ("_Hop", "_HopItem") for o in gc.get_objects())


def test_call_soon_threadsafe_and_hops_do_not_use_the_self_pipe(loop):
    sent = []

    class CountingSock:
        def __init__(self, sock) -> None:
            self.sock = sock

        def send(self, data: bytes) -> int:
            sent.append(data)
            return self.sock.send(data)

        def __getattr__(self, name: str):
            return getattr(self.sock, name)

    loop._csock = CountingSock(loop._csock)  # The self-pipe stays for signals.
    fut = loop.create_future()
    threading.Timer(0.05, loop.call_soon_threadsafe, (fut.set_result, 1)).start()
    assert loop.run_until_complete(fut) == 1
    assert loop.run_until_complete(loop.run_in_executor(None, abs, -2)) == 2
    assert sent == []


def test_call_soon_threadsafe_from_many_threads_keeps_each_threads_order(loop):
    n_threads, per_thread = 8, 300
    got: dict[int, list[int]] = {t: [] for t in range(n_threads)}
    done = loop.create_future()
    remaining = [n_threads * per_thread]

    def record(t: int, i: int) -> None:
        got[t].append(i)
        remaining[0] -= 1
        if remaining[0] == 0:
            done.set_result(None)

    def producer(t: int) -> None:
        for i in range(per_thread):
            loop.call_soon_threadsafe(record, t, i)

    threads = [threading.Thread(target=producer, args=(t,)) for t in range(n_threads)]
    loop.call_soon(lambda: [th.start() for th in threads])
    loop.run_until_complete(asyncio.wait_for(done, 30))
    for th in threads:
        th.join()
    assert got == {t: list(range(per_thread)) for t in range(n_threads)}


def test_call_soon_threadsafe_after_close_raises_and_wakeup_is_silent(loop):
    wake = loop._write_to_self
    loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_soon_threadsafe(print)
    wake()  # From a late thread: no error, no crash.


def _close_while_threads_call_soon_threadsafe() -> None:
    loop = new_event_loop()
    ran = [0]
    errors: list[BaseException] = []
    go = threading.Event()

    def bump() -> None:
        ran[0] += 1

    def producer() -> None:
        go.wait()
        try:
            for n in itertools.count():
                loop.call_soon_threadsafe(bump)
                if n % 64 == 0:
                    # Lets the loop's thread run: four producers holding the
                    # GIL for their whole switch interval queued millions
                    # of handles, and close() then took minutes under ASan.
                    time.sleep(0)
        except RuntimeError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=producer) for _ in range(4)]
    for th in threads:
        th.start()
    go.set()
    loop.run_until_complete(asyncio.sleep(0.005))
    loop.close()
    for th in threads:
        th.join(10)
    assert not any(th.is_alive() for th in threads)
    assert len(errors) == 4
    assert all("closed" in str(e) for e in errors)
    assert ran[0] > 0


def test_call_soon_threadsafe_from_threads_racing_close_ends_cleanly():
    # The wake-up's write runs without the GIL (as asyncio's socket send
    # does): close() must not close the eventfd under a write in flight.
    for _ in range(5):
        _close_while_threads_call_soon_threadsafe()


def test_call_soon_threadsafe_while_a_callback_runs_is_run_by_the_next_step(loop):
    # While the loop runs a step's callbacks it writes no wake-up for
    # call_soon_threadsafe: the next step must find the handle before it
    # polls (a watchdog thread would wake it otherwise, and say so).
    fut = loop.create_future()
    queued = threading.Event()
    fired = []

    def from_thread() -> None:
        loop.call_soon_threadsafe(fut.set_result, "thread")
        queued.set()

    def callback() -> None:
        th = threading.Thread(target=from_thread)
        th.start()
        assert queued.wait(10)  # The GIL is released while this callback runs.
        th.join()

    def watchdog() -> None:
        fired.append(True)
        loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result("watchdog"))

    timer = threading.Timer(10, watchdog)
    timer.start()
    loop.call_soon(callback)
    try:
        assert loop.run_until_complete(fut) == "thread"
    finally:
        timer.cancel()
    assert fired == []


def test_run_in_executor_wakes_a_loop_blocked_without_timeout(loop):
    # No timer anywhere: only the hop's wake-up can end the poll.
    release = threading.Event()
    threading.Timer(0.1, release.set).start()
    assert loop.run_until_complete(loop.run_in_executor(None, release.wait)) is True


def test_run_in_executor_result_exception_and_converted_exceptions(loop):
    def boom() -> None:
        raise KeyError("k")

    def invalid() -> None:
        raise concurrent.futures.InvalidStateError("x")

    async def main() -> None:
        assert await loop.run_in_executor(None, divmod, 7, 2) == (3, 1)
        with pytest.raises(KeyError):
            await loop.run_in_executor(None, boom)
        with pytest.raises(asyncio.InvalidStateError):
            await loop.run_in_executor(None, invalid)

    loop.run_until_complete(asyncio.wait_for(main(), 10))


def test_run_in_executor_returns_an_asyncio_future_of_this_loop(loop):
    async def main() -> None:
        fut = loop.run_in_executor(None, int)
        assert asyncio.isfuture(fut) and fut.get_loop() is loop
        assert await fut == 0

    loop.run_until_complete(main())


def test_run_in_executor_keeps_the_executors_thread_and_thread_locals(loop):
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    local = threading.local()

    def put() -> int:
        local.value = "kept"
        return threading.get_ident()

    def get() -> tuple[int, str]:
        return threading.get_ident(), local.value

    async def main() -> None:
        ident = await loop.run_in_executor(executor, put)
        assert ident != threading.get_ident()
        assert await loop.run_in_executor(executor, get) == (ident, "kept")

    loop.run_until_complete(main())
    executor.shutdown()


def test_cancelling_the_asyncio_future_cancels_work_not_started(loop):
    executor = RecordingExecutor(1)
    gate = threading.Event()
    ran = []

    async def main() -> None:
        busy = loop.run_in_executor(executor, gate.wait)
        queued = loop.run_in_executor(executor, ran.append, 1)
        queued.cancel()
        await asyncio.sleep(0)  # The cancel check is a done callback.
        assert executor.futures[1].cancelled()
        gate.set()
        assert await busy is True

    loop.run_until_complete(asyncio.wait_for(main(), 10))
    executor.shutdown()
    assert ran == []


def test_cancelled_while_running_drops_the_result_quietly(loop):
    executor = RecordingExecutor(1)
    gate = threading.Event()
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))

    async def main() -> None:
        running = loop.run_in_executor(executor, gate.wait)
        while not executor.futures[0].running():
            await asyncio.sleep(0.01)
        running.cancel()
        gate.set()
        # The work finishes anyway; its result must not reach the future.
        await asyncio.wrap_future(executor.futures[0])
        for _ in range(3):
            await asyncio.sleep(0)
        assert running.cancelled()

    loop.run_until_complete(asyncio.wait_for(main(), 10))
    executor.shutdown()
    assert errors == []


def test_a_future_completed_by_hand_reports_through_the_exception_handler(loop):
    gate = threading.Event()
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))

    async def main() -> None:
        fut = loop.run_in_executor(None, gate.wait)
        fut.set_result("by hand")
        gate.set()
        while not errors:
            await asyncio.sleep(0.01)

    loop.run_until_complete(asyncio.wait_for(main(), 10))
    # asyncio's own chain fails its "assert not dest.done()" here.
    assert isinstance(errors[0]["exception"], (asyncio.InvalidStateError, AssertionError))


def test_result_for_a_closed_loop_is_dropped(caplog):
    loop = new_event_loop()
    executor = RecordingExecutor(1)
    gate = threading.Event()

    async def main() -> asyncio.Future:
        return loop.run_in_executor(executor, gate.wait)

    fut = loop.run_until_complete(main())
    loop.close()
    with caplog.at_level(logging.ERROR):
        gate.set()
        executor.shutdown(wait=True)
    assert executor.futures[0].result() is True
    assert not fut.done()
    assert [r for r in caplog.records if r.name == "concurrent.futures"] == []


def test_executor_returning_an_asyncio_future_gets_it_back(loop):
    class LoopExecutor(concurrent.futures.Executor):
        def submit(self, fn, /, *args, **kwargs):
            fut = loop.create_future()
            fut.set_result(fn(*args, **kwargs))
            return fut

    async def main() -> None:
        assert await loop.run_in_executor(LoopExecutor(), abs, -4) == 4

    loop.run_until_complete(main())


def test_run_in_executor_on_a_closed_loop_raises_and_submits_nothing():
    loop = new_event_loop()
    executor = RecordingExecutor(1)
    loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.run_in_executor(executor, int)
    executor.shutdown()
    assert executor.futures == []


def test_a_loop_subclass_keeps_its_own_run_in_executor():
    from cdaphne.loop import LibuvEventLoop

    calls = []

    class Loop(LibuvEventLoop):
        def run_in_executor(self, executor, func, *args):  # type: ignore[no-untyped-def]
            calls.append(func)
            return super().run_in_executor(executor, func, *args)

    loop = Loop()
    try:
        assert loop.run_until_complete(loop.run_in_executor(None, abs, -2)) == 2
    finally:
        loop.close()
    assert calls == [abs]


def test_run_in_executor_passes_every_argument_to_submit(loop):
    executor = RecordingExecutor(1)

    async def main() -> None:
        args = tuple(range(12))
        assert await loop.run_in_executor(executor, lambda *a: a, *args) == args
        with pytest.raises(TypeError):
            await loop.run_in_executor(executor)  # type: ignore[call-arg]

    loop.run_until_complete(asyncio.wait_for(main(), 10))
    executor.shutdown()


def test_debug_mode_rejects_a_coroutine_function(loop):
    async def coro() -> None:
        pass

    loop.set_debug(True)
    with pytest.raises(TypeError, match="coroutines cannot be used"):
        loop.run_in_executor(None, coro)


def test_hops_leave_no_cycle_behind(loop):
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=2)

    async def main() -> None:
        for i in range(50):
            assert await loop.run_in_executor(executor, abs, -i) == i

    gc.collect()
    gc.disable()
    try:
        loop.run_until_complete(main())
        executor.shutdown()
        assert _live_hops() == 0
    finally:
        gc.enable()


def test_sync_to_async_keeps_contextvars_thread_sensitivity_and_exceptions(loop):
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var")

    def read_and_set() -> tuple[str, int]:
        value = var.get()
        var.set("from thread")
        return value, threading.get_ident()

    def fail() -> None:
        raise ValueError("in thread")

    async def main() -> None:
        # A context of its own: asgiref's process-wide thread-sensitive
        # executor would outlive the test and make later fork()s unsafe.
        async with ThreadSensitiveContext():
            var.set("from loop")
            value, t1 = await sync_to_async(read_and_set)()
            assert value == "from loop"
            assert var.get() == "from thread"  # asgiref copies it back.
            _, t2 = await sync_to_async(read_and_set)()
            assert t1 == t2  # thread_sensitive: one thread.
            with pytest.raises(ValueError, match="in thread"):
                await sync_to_async(fail)()

    loop.run_until_complete(asyncio.wait_for(main(), 10))


def test_async_to_sync_inside_sync_to_async_comes_back_to_the_loop(loop):
    async def on_loop() -> int:
        await asyncio.sleep(0)
        return threading.get_ident()

    def in_thread() -> tuple[int, int]:
        return async_to_sync(on_loop)(), threading.get_ident()

    async def main() -> None:
        async with ThreadSensitiveContext():
            ran_on, thread = await sync_to_async(in_thread)()
        assert ran_on == threading.get_ident() != thread

    loop.run_until_complete(asyncio.wait_for(main(), 10))


def test_signal_handlers_still_wake_the_loop(loop):
    got = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR1, got.set_result, "signalled")
    threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR1)).start()
    try:
        assert loop.run_until_complete(asyncio.wait_for(got, 10)) == "signalled"
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)


class InlineExecutor(concurrent.futures.Executor):
    """Runs the work inside submit(): the future is done before the hop."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        fut: concurrent.futures.Future = concurrent.futures.Future()
        if fn is None:
            fut.cancel()
            return fut
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            fut.set_exception(exc)
        return fut


def test_a_concurrent_future_done_before_the_hop_is_copied(loop):
    # hop.c reads a plain concurrent future's fields; one that is already
    # done when run_in_executor() chains it takes the "done at once" path.
    def boom() -> None:
        raise KeyError("k")

    async def main() -> None:
        executor = InlineExecutor()
        assert await loop.run_in_executor(executor, divmod, 9, 4) == (2, 1)
        assert await loop.run_in_executor(executor, type(None)) is None
        with pytest.raises(KeyError):
            await loop.run_in_executor(executor, boom)
        with pytest.raises(asyncio.CancelledError):
            await loop.run_in_executor(executor, None)

    loop.run_until_complete(asyncio.wait_for(main(), 10))


def test_a_concurrent_future_cancelled_by_its_executor_cancels_the_asyncio_one(loop):
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    gate = threading.Event()

    async def main() -> None:
        busy = loop.run_in_executor(executor, gate.wait)
        queued = loop.run_in_executor(executor, abs, -1)
        executor.shutdown(wait=False, cancel_futures=True)
        gate.set()
        assert await busy is True
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert queued.cancelled()

    loop.run_until_complete(asyncio.wait_for(main(), 10))


def test_a_concurrent_future_subclass_is_read_through_its_methods(loop):
    # Only concurrent.futures.Future itself is read field by field: a
    # subclass's own result()/add_done_callback() must still be used.
    calls: list[str] = []

    class Tagged(concurrent.futures.Future):
        def add_done_callback(self, fn):  # type: ignore[no-untyped-def]
            calls.append("add_done_callback")
            super().add_done_callback(fn)

        def result(self, timeout=None):  # type: ignore[no-untyped-def]
            calls.append("result")
            return ("tagged", super().result(timeout))

    class TaggingExecutor(concurrent.futures.ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
            inner = super().submit(fn, *args, **kwargs)
            outer = Tagged()
            inner.add_done_callback(lambda f: outer.set_result(f.result()))
            return outer

    executor = TaggingExecutor(max_workers=1)

    async def main() -> None:
        assert await loop.run_in_executor(executor, abs, -3) == ("tagged", 3)

    loop.run_until_complete(asyncio.wait_for(main(), 10))
    executor.shutdown()
    assert calls == ["add_done_callback", "result"]


def test_the_asyncio_future_keeps_its_callbacks_and_their_order(loop):
    # The hop leaves the future's callbacks before completing it: the app's
    # own callbacks still run, in the order they were added, and shield()
    # (sync_to_async's way of awaiting it) still gets the result.
    order: list[str] = []

    async def main() -> None:
        fut = loop.run_in_executor(None, int)
        fut.add_done_callback(lambda f: order.append("first"))
        fut.add_done_callback(lambda f: order.append("second"))
        assert await asyncio.shield(fut) == 0
        await asyncio.sleep(0)

    loop.run_until_complete(asyncio.wait_for(main(), 10))
    assert order == ["first", "second"]


# ---- create_task / create_future without their Python frames (loopapi.c) ----


def _context_reader():
    """A context with var set to "inner", and a coroutine function reading var."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="outer")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "inner")

    async def read() -> str:
        return var.get()

    return ctx, read


def test_create_task_passes_name_and_context_and_checks_its_argument(loop):
    ctx, read = _context_reader()

    async def main() -> None:
        task = loop.create_task(read(), name="reader", context=ctx)
        assert isinstance(task, asyncio.Task) and task.get_name() == "reader"
        assert await task == "inner"
        assert await loop.create_task(read()) == "outer"
        with pytest.raises(TypeError):
            loop.create_task(42)  # type: ignore[arg-type]
        fut = loop.create_future()
        assert type(fut) is asyncio.Future and fut.get_loop() is loop

    loop.run_until_complete(main())


def test_create_task_with_default_name_or_context_matches_asyncio(loop):
    import re

    ctx, read = _context_reader()

    async def main() -> None:
        plain = loop.create_task(read())
        explicit = loop.create_task(read(), name=None, context=None)
        named = loop.create_task(read(), name="n")
        in_ctx = loop.create_task(read(), context=ctx)
        assert re.fullmatch(r"Task-\d+", plain.get_name())
        assert re.fullmatch(r"Task-\d+", explicit.get_name())
        assert explicit.get_name() != plain.get_name()
        assert named.get_name() == "n"
        assert re.fullmatch(r"Task-\d+", in_ctx.get_name())
        assert plain.get_loop() is loop and in_ctx.get_loop() is loop
        if hasattr(in_ctx, "get_context"):  # 3.12+; on 3.11 the results show it
            assert in_ctx.get_context() is ctx
        results = await asyncio.gather(plain, explicit, named, in_ctx)
        assert results == ["outer", "outer", "outer", "inner"]

    loop.run_until_complete(main())


def test_create_task_honours_a_task_factory_set_later_and_debug_mode(loop):
    made = []

    def factory(lp, coro, **kw):  # type: ignore[no-untyped-def]
        task = asyncio.Task(coro, loop=lp, **kw)
        made.append(task)
        return task

    async def nothing() -> None:
        pass

    async def main() -> None:
        loop.set_task_factory(factory)
        await loop.create_task(nothing(), name="x")
        assert len(made) == 1 and made[0].get_name() == "x"
        loop.set_task_factory(None)
        loop.set_debug(True)
        task = loop.create_task(nothing())
        # BaseEventLoop drops its own frame from the traceback: the last
        # entry is this function.
        assert task._source_traceback[-1].name == "main"
        await task

    loop.run_until_complete(main())


def test_create_task_on_a_closed_loop_raises_like_asyncio():
    loop = new_event_loop()
    loop.close()

    async def nothing() -> None:
        pass

    coro = nothing()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.create_task(coro)
    coro.close()
    assert loop.create_future().get_loop() is loop


def test_loop_subclasses_keep_their_create_task_and_create_future():
    from cdaphne.loop import LibuvEventLoop

    calls = []

    class Loop(LibuvEventLoop):
        def create_task(self, coro, **kw):  # type: ignore[no-untyped-def]
            calls.append("task")
            return super().create_task(coro, **kw)

        def create_future(self):  # type: ignore[no-untyped-def]
            calls.append("future")
            return super().create_future()

    async def main() -> None:
        await asyncio.wait([asyncio.ensure_future(asyncio.sleep(0))])

    loop = Loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert "task" in calls and "future" in calls


def test_run_in_executor_takes_its_future_from_an_overridden_create_future():
    """The hop makes asyncio.Future(loop=...) itself only while create_future
    is BaseEventLoop's: a subclass's method or one set on the instance is
    called."""
    from cdaphne.loop import LibuvEventLoop

    class Marked(asyncio.Future):
        pass

    class Loop(LibuvEventLoop):
        def create_future(self):  # type: ignore[no-untyped-def]
            return Marked(loop=self)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        sub = Loop()
        try:
            fut = sub.run_in_executor(pool, int, "7")
            assert type(fut) is Marked
            assert sub.run_until_complete(fut) == 7
        finally:
            sub.close()
        plain = new_event_loop()
        try:
            fut = plain.run_in_executor(pool, int, "8")
            assert type(fut) is asyncio.Future
            assert plain.run_until_complete(fut) == 8
            plain.create_future = lambda: Marked(loop=plain)  # type: ignore[method-assign]
            fut = plain.run_in_executor(pool, int, "9")
            assert type(fut) is Marked
            assert plain.run_until_complete(fut) == 9
        finally:
            plain.close()
