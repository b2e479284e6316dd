"""The scheduling core of cdaphne's loop (csrc/sched.c): call_soon and the
run-once step in C, checked against asyncio's own SelectorEventLoop running
the same scenario."""

from __future__ import annotations

import asyncio
import contextvars
import copy
import gc
import inspect
import logging
import sys
import threading
import time
import weakref
from asyncio import format_helpers
from collections.abc import Callable
from typing import Any

import pytest

from cdaphne import _cdaphne
from cdaphne._cdaphne import LoopMethods
from cdaphne.loop import LibuvEventLoop, new_event_loop

Scenario = Callable[[asyncio.AbstractEventLoop], Any]

# A handle's repr of print("x"): Python 3.13 shows the arguments only in
# debug mode (format_helpers._format_callback_source grew `debug`).
PRINT_X = (
    "print()"
    if "debug" in inspect.signature(format_helpers._format_callback_source).parameters
    else "print('x')"
)


def on_both(scenario: Scenario) -> Any:
    """Runs scenario on asyncio's loop and on cdaphne's; returns cdaphne's
    result after checking that both are equal."""
    results = []
    for make in (asyncio.SelectorEventLoop, new_event_loop):
        loop = make()
        try:
            results.append(scenario(loop))
        finally:
            loop.close()
    assert results[1] == results[0]
    return results[1]


@pytest.fixture
def loop():
    loop = new_event_loop()
    yield loop
    loop.close()


def test_call_soon_returns_an_asyncio_handle():
    def scenario(loop):
        h = loop.call_soon(print, "x")
        assert type(h) is asyncio.Handle
        assert h._loop is loop and h._args == ("x",) and h._callback is print
        assert loop._ready[-1] is h
        out = [repr(h), h.cancelled(), h._source_traceback, h._repr]
        h.cancel()
        return [*out, h.cancelled(), repr(h), h._callback, h._args]

    assert on_both(scenario) == [f"<Handle {PRINT_X}>", False, None, None, True,
                                 "<Handle cancelled>", None, None]  # fmt: skip


def test_callbacks_run_in_order_and_cancelled_ones_never():
    def scenario(loop):
        out = []
        loop.call_soon(out.append, 1)
        loop.call_soon(out.append, 2).cancel()
        loop.call_soon(out.append, 3)
        loop.call_soon(loop.stop)
        loop.call_soon(out.append, 4)  # Runs: stop() ends the next step.
        loop.run_forever()
        loop.call_soon(loop.stop)
        loop.run_forever()
        return out

    assert on_both(scenario) == [1, 3, 4]


def test_callbacks_added_while_running_wait_for_the_next_step():
    def scenario(loop):
        out = []

        def first() -> None:
            out.append("first")
            loop.call_soon(out.append, "nested")
            loop.stop()

        loop.call_soon(first)
        loop.call_soon(out.append, "second")
        loop.run_forever()
        out.append(("left", len(loop._ready)))
        loop.call_soon(loop.stop)
        loop.run_forever()
        return out

    assert on_both(scenario) == ["first", "second", ("left", 1), "nested"]


def test_due_timers_run_after_ready_callbacks_of_the_same_step():
    def scenario(loop):
        out = []

        def start() -> None:
            loop.call_at(loop.time() - 1, out.append, "timer due")
            loop.call_later(0, out.append, "timer 0")
            loop.call_soon(out.append, "soon")
            loop.call_later(0.05, loop.stop)

        loop.call_soon(start)
        loop.run_forever()
        return out

    assert on_both(scenario) == ["soon", "timer due", "timer 0"]


def test_timers_fire_in_when_order_and_cancelled_timers_are_pruned():
    def scenario(loop):
        out = []
        base = loop.time()
        handles = [loop.call_at(base + 0.001 * (i % 7), out.append, i) for i in range(240)]
        for h in handles[::2] + handles[1::4]:
            h.cancel()
        counts = (len(loop._scheduled), loop._timer_cancelled_count)
        loop.call_later(0.05, loop.stop)
        loop.run_forever()
        return counts, out, len(loop._scheduled), loop._timer_cancelled_count

    counts, out, left, cancelled = on_both(scenario)
    assert counts == (240, 180) and left == 0 and cancelled == 0
    assert len(out) == 60


def test_loop_time_and_sleep_timeout(loop):
    async def main() -> float:
        start = loop.time()
        async with asyncio.timeout(0.05):
            await asyncio.sleep(10)
        return loop.time() - start

    with pytest.raises(TimeoutError):
        loop.run_until_complete(main())
    assert abs(loop.time() - time.monotonic()) < 1


def test_exception_in_callback_goes_to_the_exception_handler():
    def scenario(loop):
        seen = []

        def handler(lp, ctx) -> None:
            seen.append((sorted(ctx), ctx["message"], type(ctx["exception"]).__name__))
            assert isinstance(ctx["handle"], asyncio.Handle)

        def boom(x: int) -> None:
            raise ValueError(x)

        loop.set_exception_handler(handler)
        loop.call_soon(boom, 1)
        loop.call_soon(seen.append, "after")
        loop.call_soon(loop.stop)
        loop.run_forever()
        return seen

    seen = on_both(scenario)
    assert seen[1] == "after"
    assert seen[0][0] == ["exception", "handle", "message"]
    assert seen[0][1].startswith("Exception in callback ") and "boom" in seen[0][1]


def test_default_exception_handler_logs(loop, caplog):
    loop.call_soon(lambda: 1 / 0)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.run_forever()
    assert any("Exception in callback" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_and_system_exit_propagate(exc):
    def scenario(loop):
        out = []

        def raise_it() -> None:
            raise exc

        loop.call_soon(out.append, 1)
        loop.call_soon(raise_it)
        loop.call_soon(out.append, 2)
        try:
            loop.run_forever()
        except exc:
            out.append("raised")
        out.append(len(loop._ready))
        return out

    assert on_both(scenario) == [1, "raised", 1]


def test_callbacks_run_in_their_context():
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    def scenario(loop):
        out = []
        ctx = contextvars.copy_context()
        ctx.run(var.set, "in ctx")
        var.set("at call_soon")
        loop.call_soon(lambda: out.append(var.get()))
        loop.call_soon(lambda: out.append(var.get()), context=ctx)
        h = loop.call_soon(lambda: var.set("changed"))
        loop.call_soon(lambda: out.append(var.get()))
        var.set("later")
        loop.call_soon(loop.stop)
        loop.run_forever()
        out.append(h._context.get(var))  # get_context() is 3.12+
        out.append(ctx.get(var))
        var.set("unset")
        return out

    assert on_both(scenario) == ["at call_soon", "in ctx", "at call_soon", "changed", "in ctx"]


def test_a_context_already_entered_is_reported_and_the_loop_goes_on(caplog):
    def scenario(loop):
        out = []
        ctx = contextvars.copy_context()

        def inner() -> None:
            loop.call_soon(print, context=ctx)
            loop.call_soon(out.append, "after")
            loop.call_soon(loop.stop)
            loop.run_forever()

        ctx.run(inner)
        return out

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        assert on_both(scenario) == ["after"]
    logged = [r for r in caplog.records if "already entered" in str(r.exc_info)]
    assert len(logged) == 2  # One per loop.


def test_call_soon_argument_errors_match_asyncio():
    def scenario(loop):
        out = []
        for args, kw in [((), {}), ((print,), {"bogus": 1}), ((print,), {"context": 1})]:
            try:
                loop.call_soon(*args, **kw)
                out.append("ok")
            except TypeError:
                out.append("TypeError")
        loop._ready.clear()
        return out

    assert on_both(scenario) == ["TypeError", "TypeError", "ok"]


def test_call_soon_on_a_closed_loop_raises():
    def scenario(loop):
        loop.close()
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            loop.call_soon(print)
        return True

    assert on_both(scenario)


def test_debug_mode_checks_thread_and_callback(loop):
    loop.set_debug(True)
    with pytest.raises(TypeError):
        loop.call_soon(42)
    errors = []

    def other_thread() -> None:
        try:
            loop.call_soon(print)
        except RuntimeError as exc:
            errors.append(str(exc))

    async def main() -> None:
        th = threading.Thread(target=other_thread)
        th.start()
        th.join()

    loop.run_until_complete(main())
    assert errors and "thread" in errors[0]
    h = loop.call_soon(print)
    assert h._source_traceback  # asyncio's debug handle.
    h.cancel()


def test_debug_mode_warns_about_slow_callbacks(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01
    loop.call_soon(time.sleep, 0.05)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_forever()
    assert any("Executing <Handle" in r.getMessage() for r in caplog.records)


def test_debug_mode_can_be_switched_on_while_running(loop):
    seen = []

    async def main() -> None:
        await asyncio.sleep(0)
        loop.set_debug(True)
        seen.append(loop.call_soon(print)._source_traceback is not None)
        loop.set_debug(False)
        seen.append(loop.call_soon(print)._source_traceback is not None)

    loop.run_until_complete(main())
    assert seen == [True, False]


def test_close_clears_ready_and_scheduled(loop):
    loop.call_soon(print)
    loop.call_later(10, print)
    loop.close()
    assert len(loop._ready) == 0 and loop._scheduled == []


def test_task_switches_and_gather(loop):
    async def worker(n: int) -> int:
        for _ in range(n):
            await asyncio.sleep(0)
        return n

    async def main() -> list[int]:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(worker(i)) for i in range(20)]
        return [t.result() for t in tasks]

    assert loop.run_until_complete(main()) == list(range(20))


def test_call_later_and_call_at_return_asyncio_timer_handles():
    def scenario(loop):
        loop.time = lambda: 100.0  # Overridable, as asyncio's tests do.
        h = loop.call_later(5, print, "x")
        a = loop.call_at(50, print)
        # asyncio's TimerHandle, or on cdaphne's loop its subclass whose
        # cancel() is in C (csrc/timer.c): same name, repr and slots.
        for t in (h, a):
            assert isinstance(t, asyncio.TimerHandle) and type(t).__name__ == "TimerHandle"
            assert type(t) in (asyncio.TimerHandle, _cdaphne.TimerHandle)
            assert type(t).__mro__[-3:] == asyncio.TimerHandle.__mro__
        out = [h.when(), a.when(), h._scheduled, repr(h), loop._scheduled[0] is a]
        h.cancel()
        out += [h._scheduled, h.cancelled(), loop._timer_cancelled_count, repr(h)]
        a.cancel()
        a.cancel()
        out.append(loop._timer_cancelled_count)
        return out

    assert on_both(scenario) == [
        *(105.0, 50, True, f"<TimerHandle when=105.0 {PRINT_X}>", True),
        *(True, True, 1, "<TimerHandle cancelled when=105.0>", 2),
    ]


def test_timer_handles_copy_compare_and_construct_as_asyncios_do():
    # What else asyncio's TimerHandle, a Python class, does with a copy or
    # a timer its class made: ==, hash, order, slots, repr (also in debug
    # mode), weakref, no __dict__, _run.
    def scenario(loop):
        loop.time = lambda: 100.0
        h = loop.call_later(5, print, "x")
        later = loop.call_at(200, print)
        soon = loop.call_soon(print, "y")
        c, s = copy.copy(h), copy.copy(soon)
        out = [type(c) is type(h), c == h, c is not h, hash(c) == hash(h), c.when()]
        out += [c._callback is print, c._args, c._cancelled, c._scheduled, c._loop is loop]
        out += [c._context is h._context, repr(c), repr(s) == repr(soon)]
        out += [h < later, later > h, h <= c, h >= c, h != later, h == later]
        made = type(h)(105.0, print, ("x",), loop)
        out += [made == h, made.when(), repr(made), made._scheduled]
        out += [weakref.ref(c)() is c, hasattr(c, "__dict__")]
        ran: list[str] = []
        copy.copy(loop.call_later(1, ran.append, "timer"))._run()
        copy.copy(loop.call_soon(ran.append, "soon"))._run()
        out.append(ran)
        try:
            c.other = 1
        except AttributeError:
            out.append("no other attribute")
        c.cancel()  # Not in the loop's heap, but _scheduled (copied): counted.
        out += [c.cancelled(), h.cancelled(), loop._timer_cancelled_count, repr(c)]
        loop.set_debug(True)
        d = copy.copy(loop.call_later(1, print))
        out += ["created at" in repr(d), d._source_traceback is not None]
        for t in (h, later, soon, d):
            t.cancel()
        return out

    assert on_both(scenario) == [
        *(True, True, True, True, 105.0),
        *(True, ("x",), False, True, True),
        *(True, f"<TimerHandle when=105.0 {PRINT_X}>", True),
        *(True, True, True, True, True, False),
        *(True, 105.0, f"<TimerHandle when=105.0 {PRINT_X}>", False),
        *(True, False, ["timer", "soon"], "no other attribute"),
        *(True, False, 1, "<TimerHandle cancelled when=105.0>"),
        *(True, True),
    ]


def test_timer_argument_errors_match_asyncio():
    def scenario(loop):
        out = []
        for fn, args, kw in [
            (loop.call_later, (None, print), {}),
            (loop.call_at, (None, print), {}),
            (loop.call_later, (1,), {}),
            (loop.call_at, (1, print), {"bogus": 1}),
            (loop.call_later, ("1", print), {}),
        ]:
            try:
                fn(*args, **kw).cancel()
                out.append("ok")
            except TypeError:
                out.append("TypeError")
        return out

    assert on_both(scenario) == ["TypeError"] * 5


def test_timers_in_debug_mode_take_asyncios_path(loop):
    loop.set_debug(True)
    h = loop.call_later(10, print)
    assert h._source_traceback
    with pytest.raises(TypeError):
        loop.call_at(loop.time(), 42)
    h.cancel()


def test_timer_context_and_when_order_with_call_soon():
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    def scenario(loop):
        out = []
        ctx = contextvars.copy_context()
        ctx.run(var.set, "ctx")
        base = loop.time()
        loop.call_at(base + 0.02, lambda: out.append(("b", var.get())))
        loop.call_at(base + 0.01, lambda: out.append(("a", var.get())), context=ctx)
        loop.call_later(0.03, loop.stop)
        loop.call_soon(lambda: out.append(("soon", var.get())))
        loop.run_forever()
        return out

    assert on_both(scenario) == [("soon", "unset"), ("a", "ctx"), ("b", "unset")]


def test_call_soon_threadsafe_from_a_thread_matches_asyncio():
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    def scenario(loop):
        out, kinds = [], []
        ctx = contextvars.copy_context()
        ctx.run(var.set, "ctx")

        def in_thread() -> None:
            h = loop.call_soon_threadsafe(out.append, "plain")
            kinds.append(type(h))
            loop.call_soon_threadsafe(lambda: out.append(var.get()), context=ctx)
            loop.call_soon_threadsafe(out.append, "cancelled").cancel()
            loop.call_soon_threadsafe(loop.stop)

        def run_thread() -> None:
            # The loop waits here, so no handle runs before its cancel().
            t = threading.Thread(target=in_thread)
            t.start()
            t.join()

        loop.call_soon(run_thread)
        loop.run_forever()
        return kinds, out

    assert on_both(scenario) == ([asyncio.Handle], ["plain", "ctx"])


def test_call_soon_threadsafe_in_debug_mode_and_after_close(loop):
    loop.set_debug(True)
    got = []

    def in_thread() -> None:
        h = loop.call_soon_threadsafe(loop.stop)
        got.append(h._source_traceback is not None)

    loop.call_soon(threading.Thread(target=in_thread).start)
    loop.run_forever()
    assert got == [True]
    loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.call_soon_threadsafe(print)


def test_handles_made_in_c_are_freed_without_the_gc(loop):
    import gc

    def live() -> int:
        kinds = (asyncio.Handle, asyncio.TimerHandle, _cdaphne.TimerHandle)
        return sum(type(o) in kinds for o in gc.get_objects())

    async def main() -> None:
        for _ in range(200):
            loop.call_soon(len, "x")
            loop.call_later(0, len, "y")
            loop.call_later(10, len, "z").cancel()
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)

    loop.run_until_complete(main())  # Warm-up: imports, caches.
    gc.collect()
    before = live()
    gc.disable()
    try:
        loop.run_until_complete(main())
        assert live() <= before
    finally:
        gc.enable()


def test_the_timer_heap_is_the_list_heapq_would_build():
    def scenario(loop):
        out = []
        base = 1000.0
        # Ties, ints and floats, cancellations and pops: the list's layout
        # must be heapq's, item for item.
        whens = [base + (i * 37 % 11) * 0.5 for i in range(150)] + [900, 900.0, 1002]
        handles = [loop.call_at(w, out.append, i) for i, w in enumerate(whens)]
        index = {id(h): i for i, h in enumerate(handles)}
        layouts = [[index[id(h)] for h in loop._scheduled]]
        for h in handles[3:80:3]:
            h.cancel()
        loop.time = lambda: 1003.0
        loop._run_once()  # prunes, runs what is due
        layouts.append([index[id(h)] for h in loop._scheduled])
        layouts.append(out)
        layouts.append([h._scheduled for h in handles])
        return layouts, loop._timer_cancelled_count

    layouts, cancelled = on_both(scenario)
    assert len(layouts[0]) == 153 and len(layouts[2]) > 10 and cancelled > 0


def test_the_timer_heap_stays_heapqs_when_python_code_changes_the_list():
    # The core keeps a copy of the list's whens beside it (sched.c): every
    # change made in Python must be seen.
    import heapq

    def scenario(loop):
        out = []
        base = 1000.0
        handles = []

        def at(w, i):
            handles.append(loop.call_at(w, out.append, i))

        def layout():
            index = {id(h): i for i, h in enumerate(handles)}
            return [index.get(id(h), -1) for h in loop._scheduled]

        for i in range(60):
            at(base + (i * 13 % 7), i)
        layouts = [layout()]
        sched = loop._scheduled
        # Same size, items moved: pop the top and push it back in Python.
        top = heapq.heappop(sched)
        heapq.heappush(sched, top)
        sched[1], sched[2] = sched[2], sched[1]  # still a heap? heapq's own fix:
        heapq.heapify(sched)
        at(base - 1, 60)
        layouts.append(layout())
        # Appended and removed in Python, then C pops.
        extra = asyncio.TimerHandle(base + 2.5, out.append, (99,), loop)
        heapq.heappush(sched, extra)
        handles.append(extra)
        sched.remove(handles[5])
        heapq.heapify(sched)
        at(base + 2.5, 61)
        layouts.append(layout())
        # A new list.
        loop._scheduled = sorted(sched, key=lambda h: h.when(), reverse=True)
        heapq.heapify(loop._scheduled)
        at(base + 3, 62)
        layouts.append(layout())
        # Debug mode pushes and pops in Python, then C again.
        loop.set_debug(True)
        at(base + 1, 63)
        loop.set_debug(False)
        at(base + 1, 64)
        layouts.append(layout())
        loop.time = lambda: base + 3.5
        loop._run_once()
        layouts.append(out)
        layouts.append(layout())
        return layouts

    layouts = on_both(scenario)
    assert len(layouts[0]) == 60 and len(layouts[-2]) > 30


def test_a_burst_of_timers_runs_in_heapq_order_and_the_heap_refills():
    def scenario(loop):
        out = []
        for i in range(20000):
            loop.call_at(1000.0 + (i * 7919 % 20000) // 3, out.append, i)
        loop.time = lambda: 2000.0
        loop._run_once()  # the copy of the heap shrinks as it empties
        loop.time = lambda: 9000.0
        loop._run_once()
        first = list(out)
        for i in range(50):
            loop.call_at(8000.0 + i % 4, out.append, -i)
        loop._run_once()
        return first, out[len(first) :], len(loop._scheduled)

    first, second, left = on_both(scenario)
    assert len(first) == 20000 and len(second) == 50 and left == 0


def test_a_subclass_clock_and_instance_clock_are_used_for_timers():
    from cdaphne.loop import LibuvEventLoop

    class FakeClock(LibuvEventLoop):
        def time(self) -> float:
            return 5000.0

    loop = FakeClock()
    try:
        assert loop.call_later(5, print).when() == 5005.0
        loop.time = lambda: 7.0
        assert loop.call_later(1, print).when() == 8.0
        del loop.time
        assert loop.call_later(2, print).when() == 5002.0
    finally:
        loop.close()
    loop = new_event_loop()
    try:
        before = time.monotonic()
        when = loop.call_later(0, print).when()
        assert before <= when <= time.monotonic()
    finally:
        loop.close()


def test_the_ready_queue_behaves_like_asyncios_deque():
    def scenario(loop):
        out = []
        ready = loop._ready
        hs = [asyncio.Handle(out.append, (i,), loop) for i in range(200)]
        for h in hs[:150]:
            ready.append(h)
        for h in hs[150:]:
            ready.appendleft(h)
        got = [len(ready), bool(ready), ready[0] is hs[-1], ready[-1] is hs[149]]
        got += [hs[3] in ready, ready.popleft() is hs[-1], ready.pop() is hs[149]]
        got.append(len(list(ready)))
        loop._run_once()  # runs what was queued (no poll wait: ready is not empty)
        got += [len(ready), bool(ready), out[:3], len(out)]
        with pytest.raises(IndexError):
            ready.popleft()
        with pytest.raises(IndexError):
            ready.pop()
        with pytest.raises(IndexError):
            ready[0]
        ready.append(hs[0])
        ready.clear()
        got.append(len(ready))
        return got

    got = on_both(scenario)
    assert got[:7] == [200, True, True, True, True, True, True]
    assert got[-1] == 0 and got[-2] == 198


def test_the_ready_queue_in_debug_mode_and_across_close(loop):
    loop.set_debug(True)
    out = []
    loop.call_soon(out.append, 1)  # asyncio's call_soon: _ready.append
    assert len(loop._ready) == 1 and "Handle" in repr(loop._ready)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == [1] and not loop._ready
    loop.call_soon(out.append, 2)
    loop.close()
    assert len(loop._ready) == 0


def test_direct_writes_to_the_loops_attributes_are_seen_at_once(loop):
    # The core caches what it reads of the loop's __dict__ (dict watchers):
    # any write, by set_debug() or straight to the attribute, is seen.
    out = []
    loop.call_soon(out.append, 1)
    loop._run_once()
    loop._debug = True
    with pytest.raises(TypeError, match="callable"):
        loop.call_soon(1)  # asyncio's debug-mode check
    loop._debug = False
    loop.call_soon(1)
    loop._ready.clear()
    loop._closed = True
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_soon(print)
    loop._closed = False
    loop.__dict__["_scheduled"] = fresh = []
    loop.call_later(0, out.append, 2)
    assert len(fresh) == 1
    loop.time = lambda: 1e9
    assert loop.call_later(1, print).when() == 1e9 + 1
    del loop.time
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == [1, 2]


def test_run_handles_are_reused_only_when_nothing_can_see_them(loop):
    import weakref

    out = []
    held = loop.call_soon(out.append, "held")
    loop.call_soon(out.append, "dropped")
    watched = weakref.ref(loop.call_soon(out.append, "watched"))
    loop._run_once()
    assert out == ["held", "dropped", "watched"]
    # A handle someone holds keeps its state; one only a weak reference
    # sees dies as it would without reuse.
    assert held._callback == out.append and held._args == ("held",)
    assert watched() is None
    fresh = [loop.call_soon(out.append, i) for i in range(40)]
    assert held not in fresh and len({id(h) for h in fresh}) == 40
    assert all(type(h) is asyncio.Handle and h._loop is loop for h in fresh)
    assert [h._args for h in fresh] == [(i,) for i in range(40)]
    assert all(not h.cancelled() and h._repr is None for h in fresh)
    loop._run_once()
    assert out[3:] == list(range(40))


def test_the_cancelled_timer_count_is_kept_in_c_and_still_an_attribute(loop):
    loop.time = lambda: 100.0
    hs = [loop.call_at(200 + i, print) for i in range(4)]
    hs[0].cancel()
    hs[1].cancel()
    hs[1].cancel()
    assert loop._timer_cancelled_count == 2
    assert "_timer_cancelled_count" not in loop.__dict__
    loop._timer_cancelled_count = 7  # asyncio's own _run_once writes it
    assert loop._timer_cancelled_count == 7
    loop._timer_cancelled_count = 2
    loop.set_debug(True)
    loop.call_soon(hs[3].cancel)  # something ready: the poll does not wait
    loop._run_once()  # asyncio's: pops hs[0] and hs[1]
    assert loop._timer_cancelled_count == 1
    loop.set_debug(False)
    loop.call_soon(hs[2].cancel)
    loop._run_once()
    loop.call_soon(int)
    loop._run_once()  # the C step pops hs[2] and hs[3]
    assert loop._timer_cancelled_count == 0 and loop._scheduled == []
    assert [h._scheduled for h in hs] == [False] * 4


def test_call_later_delays_of_every_kind_match_asyncio():
    def scenario(loop):
        whens = []
        for delay in (0, 5, 2.5, -1, True, 10**3):
            before = loop.time()
            when = loop.call_later(delay, print).when()
            whens.append((type(when), before + delay <= when <= loop.time() + delay))
        for bad in (10**400, "1", None):
            with pytest.raises((OverflowError, TypeError)) as e:
                loop.call_later(bad, print)
            whens.append(e.type)
        return whens

    on_both(scenario)


def test_get_debug_is_asyncios_also_after_close():
    loop = new_event_loop()
    assert loop.get_debug() is False
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.close()
    assert "closed=True debug=True" in repr(loop)  # asyncio's close() warnings use it
    loop.set_debug(False)
    assert loop.get_debug() is False

    class OwnDebug(type(loop)):
        def get_debug(self) -> bool:
            return "own"  # type: ignore[return-value]

    other = OwnDebug()
    try:
        assert other.get_debug() == "own"
    finally:
        other.close()


def test_create_task_and_run_in_executor_see_factory_debug_and_close_at_once(loop):
    # create_task and run_in_executor read _closed, _debug and
    # _task_factory through the step's cache: every change is seen at once.
    made = []

    def factory(lp, coro, **kw):
        made.append(coro)
        return asyncio.Task(coro, loop=lp, **kw)

    async def leaf():
        return 1

    async def main():
        assert await loop.create_task(leaf()) == 1
        loop.set_task_factory(factory)
        assert await loop.create_task(leaf()) == 1
        assert len(made) == 1
        loop._task_factory = None  # straight to the attribute
        assert await loop.create_task(leaf()) == 1
        assert len(made) == 1
        assert await loop.run_in_executor(None, int, "7") == 7

    loop.run_until_complete(main())
    loop._debug = True
    with pytest.raises(TypeError, match="coroutines cannot be used"):
        loop.run_in_executor(None, leaf)  # asyncio's debug-mode check
    loop._debug = False
    loop._closed = True
    coro = leaf()
    with pytest.raises(RuntimeError, match="closed"):
        loop.create_task(coro)
    coro.close()
    with pytest.raises(RuntimeError, match="closed"):
        loop.run_in_executor(None, int)
    loop._closed = False


def test_call_soon_threadsafe_from_many_threads_wakes_a_blocked_loop(loop):
    # The wake-up is coalesced (one eventfd write until the loop reads it):
    # no callback from any thread is lost, and a loop blocked in its poll
    # wakes for each burst.
    n_threads, per_thread = 8, 500
    seen = []
    done = loop.create_future()

    def on_loop(i):
        seen.append(i)
        if len(seen) == n_threads * per_thread:
            done.set_result(None)

    def worker(t):
        for i in range(per_thread):
            loop.call_soon_threadsafe(on_loop, t * per_thread + i)
            if i % 50 == 0:
                time.sleep(0.001)  # let the loop block again

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    loop.run_until_complete(asyncio.wait_for(done, 60))
    for th in threads:
        th.join()
    assert sorted(seen) == list(range(n_threads * per_thread))


class _ThreadSafeHandle(asyncio.Handle):
    # What CPython's newer asyncio (asyncio.events._ThreadSafeHandle) makes
    # for call_soon_threadsafe: a Handle whose cancel(), cancelled() and
    # _run() take its own RLock.  Stands in for it on Pythons without it.
    __slots__ = ("_lock",)

    def __init__(self, callback, args, loop, context=None):
        super().__init__(callback, args, loop, context)
        self._lock = threading.RLock()

    def cancel(self):
        with self._lock:
            return super().cancel()

    def cancelled(self):
        with self._lock:
            return super().cancelled()

    def _run(self):
        with self._lock:
            if self._cancelled:
                return
            return super()._run()


def _threadsafe_with_locked_handle(self, callback, *args, context=None):
    # BaseEventLoop.call_soon_threadsafe of those Pythons.
    from asyncio import events

    self._check_closed()
    if self._debug:
        self._check_callback(callback, "call_soon_threadsafe")
    handle = events._ThreadSafeHandle(callback, args, self, context)
    self._ready.append(handle)
    if handle._source_traceback:
        del handle._source_traceback[-1]
    self._write_to_self()
    return handle


@pytest.fixture
def locked_threadsafe(monkeypatch):
    """asyncio with _ThreadSafeHandle: the running Python's, else the
    stand-in above with the method that makes it."""
    from asyncio import events

    if not hasattr(events, "_ThreadSafeHandle"):
        monkeypatch.setattr(events, "_ThreadSafeHandle", _ThreadSafeHandle, raising=False)
        monkeypatch.setattr(
            asyncio.BaseEventLoop, "call_soon_threadsafe", _threadsafe_with_locked_handle
        )
    return events._ThreadSafeHandle


def test_call_soon_threadsafe_makes_asyncios_locked_handle(locked_threadsafe):
    rlock_type = type(threading.RLock())

    def scenario(loop):
        if hasattr(loop, "core"):  # cdaphne's: made in C, not by asyncio
            assert "call_soon_threadsafe" not in vars(loop)
            assert type(loop).call_soon_threadsafe is LoopMethods.__dict__["call_soon_threadsafe"]
        out = []
        h = loop.call_soon_threadsafe(out.append, "x")
        assert type(h) is locked_threadsafe
        assert type(h._lock) is rlock_type
        kept = loop.call_soon_threadsafe(out.append, "kept")
        gone = loop.call_soon_threadsafe(out.append, "gone")
        th = threading.Thread(target=gone.cancel)
        th.start()
        th.join()
        loop.call_soon(loop.stop)
        loop.run_forever()
        ctx = contextvars.copy_context()
        with_ctx = loop.call_soon_threadsafe(print, "y", context=ctx)
        assert with_ctx._context is ctx
        with_ctx.cancel()
        loop.call_soon(loop.stop)
        loop.run_forever()
        return (out, repr(h), repr(gone), h.cancelled(), gone.cancelled(), kept._lock is h._lock)

    out, _, _, h_cancelled, gone_cancelled, shared = on_both(scenario)
    assert out == ["x", "kept"]
    assert not h_cancelled and gone_cancelled and not shared


def test_the_loops_dict_stays_its_attributes_and_the_core_sees_every_store(loop):
    """The core caches what it reads of the loop's __dict__ and is told of
    changes by a dict watcher; CPython 3.13.0 does not tell watchers about
    attributes an object keeps inline (gh-125608), so the loop may get a
    __dict__ of its own: that one must stay the loop's attributes."""
    loop.extra = 1
    assert vars(loop)["extra"] == 1 and loop.extra == 1
    vars(loop)["other"] = 2
    assert loop.other == 2
    for debug in (True, False, True):
        loop.set_debug(debug)
        assert vars(loop)["_debug"] is debug and loop.get_debug() is debug
        h = loop.call_soon(print)
        assert (h._source_traceback is not None) is debug
        h.cancel()


# ---- The loop's timers cancel in C (csrc/timer.c) with asyncio's semantics.


def test_timer_cancel_matches_asyncio_step_for_step():
    def scenario(loop):
        loop.time = lambda: 100.0
        cb_args = ("x",)
        h = loop.call_later(5, print, *cb_args)
        other = asyncio.TimerHandle(105.0, print, cb_args, loop)
        out = [h == other, h < other, h <= other, hash(h) == hash(other)]
        assert h.cancel() is None
        out += [h._cancelled, h.cancelled(), h._scheduled, h._callback, h._args]
        out += [h.when(), repr(h), loop._timer_cancelled_count, h == other]
        h.cancel()  # Once only.
        out.append(loop._timer_cancelled_count)
        loop.call_soon(loop.stop)
        loop.run_forever()  # Pruned: no longer scheduled.
        out += [h._scheduled, loop._timer_cancelled_count, len(loop._scheduled)]
        return out

    assert on_both(scenario) == [
        *(True, False, True, True),
        *(True, True, True, None, None),
        *(105.0, "<TimerHandle cancelled when=105.0>", 1, False),
        1,
        *(False, 0, 0),
    ]


def test_timer_cancel_in_debug_mode_keeps_asyncios_repr():
    def scenario(loop):
        loop.time = lambda: 100.0
        h = loop.call_later(5, print, "x")  # made outside debug mode
        loop.set_debug(True)
        h.cancel()
        loop.set_debug(False)
        return h._repr, repr(h), h._callback

    r, rep, cb = on_both(scenario)
    assert r.startswith("<TimerHandle cancelled when=105.0 print(") and r == rep and cb is None


def test_timer_cancel_asks_the_loop_subclasss_own_methods():
    def scenario(base):
        calls = []

        class Loop(base):
            def _timer_handle_cancelled(self, handle):
                calls.append(("cancelled", handle._cancelled))
                super()._timer_handle_cancelled(handle)

            def get_debug(self):
                calls.append(("debug",))
                return super().get_debug()

        loop = Loop()
        try:
            h = loop.call_later(10, print)
            calls.clear()
            h.cancel()
            h.cancel()
            return calls, loop._timer_cancelled_count, h.cancelled()
        finally:
            loop.close()

    calls, count, cancelled = scenario(asyncio.SelectorEventLoop)
    assert scenario(type(new_event_loop_closed())) == (calls, count, cancelled)
    assert calls[0] == ("cancelled", False) and ("debug",) in calls
    assert count == 1 and cancelled


def new_event_loop_closed():
    loop = new_event_loop()
    loop.close()
    return loop


def test_an_error_from_the_loop_leaves_the_timer_uncancelled():
    def scenario(loop):
        h = loop.call_later(10, print)
        loop._timer_handle_cancelled = lambda handle: 1 / 0
        with pytest.raises(ZeroDivisionError):
            h.cancel()
        del loop._timer_handle_cancelled
        out = [h.cancelled(), h._callback is print, loop._timer_cancelled_count]
        h.cancel()
        return [*out, h.cancelled(), loop._timer_cancelled_count]

    assert on_both(scenario) == [False, True, 0, True, 1]


def test_timer_cancel_asks_instance_attributes_set_after_the_loop_ran():
    def scenario(loop):
        calls = []
        loop.run_until_complete(asyncio.sleep(0))  # the core's reads are cached
        h1, h2, h3 = (loop.call_later(10, print, i) for i in range(3))
        h1.cancel()
        loop.get_debug = lambda: calls.append("debug") or True
        h2.cancel()  # debug: the repr is kept
        loop._timer_handle_cancelled = lambda handle: calls.append("cancelled")
        h3.cancel()
        del loop.get_debug, loop._timer_handle_cancelled
        return calls, h1._repr, h2._repr is not None, loop._timer_cancelled_count

    calls, *rest = on_both(scenario)
    assert calls.count("cancelled") == 1 and "debug" in calls and rest == [None, True, 2]


@pytest.mark.parametrize("cls", [asyncio.TimerHandle, asyncio.Handle])
def test_a_patch_of_asyncios_cancel_applies_to_the_loops_timers(cls):
    original = cls.cancel

    def scenario(loop):
        calls = []

        def patched(self):
            calls.append(type(self).__name__)
            return original(self)

        h = loop.call_later(10, print)
        cls.cancel = patched
        try:
            h.cancel()
        finally:
            cls.cancel = original
        h2 = loop.call_later(10, print)
        h2.cancel()
        return calls, h.cancelled(), h2.cancelled(), loop._timer_cancelled_count

    assert on_both(scenario) == (["TimerHandle"], True, True, 2)


# ---- A class attribute added after the loop exists (issue 11).


@pytest.mark.parametrize("subclass", [False, True], ids=["class", "subclass"])
@pytest.mark.parametrize(
    "base", [asyncio.SelectorEventLoop, LibuvEventLoop], ids=["asyncio", "cdaphne"]
)
def test_a_property_added_to_the_loop_class_later_wins_over_the_dict(base, subclass):
    """The core reads the loop's _debug, _closed... from its __dict__ only
    while no data descriptor of its class (or of a base) would win over the
    __dict__: a property added after the loop ran is read at once, as
    getattr reads it, and the __dict__ again once it is gone."""
    from unittest import mock

    cls = type("Sub", (base,), {}) if subclass else base
    loop = cls()
    seen = []
    try:
        loop.run_until_complete(asyncio.sleep(0))  # warm every cache
        assert loop.get_debug() is False and loop.create_future()._source_traceback is None
        debug = property(lambda self: True, lambda self, v: seen.append(v))
        with mock.patch.object(base, "_debug", debug, create=True):
            assert loop.get_debug() is True
            h = loop.call_soon(print)
            assert h._source_traceback is not None  # asyncio's debug-mode path
            h.cancel()
            assert loop.create_future()._source_traceback is not None
            timer = loop.call_later(10, print)
            assert timer._source_traceback is not None
            timer.cancel()
            loop.set_debug(False)
            assert seen == [False] and loop.get_debug() is True
        assert loop.get_debug() is False
        assert loop.call_soon(print)._source_traceback is None
        closed = property(lambda self: True)
        with mock.patch.object(base, "_closed", closed, create=True):
            with pytest.raises(RuntimeError, match="closed"):
                loop.call_soon(print)
            with pytest.raises(RuntimeError, match="closed"):
                loop.call_later(1, print)
        loop.call_soon(seen.append, "ran")
        loop.run_until_complete(asyncio.sleep(0))
        assert seen == [False, "ran"]
    finally:
        loop.close()


def test_one_argument_tuples_of_run_handles_are_never_seen_again():
    """A run Handle's 1-tuple of arguments that nothing else holds is kept
    for the next call_soon with one argument: the argument is released when
    the handle is, and a tuple the app holds (h._args) never changes."""

    class Arg:
        pass

    def scenario(loop):
        seen = []
        arg = Arg()
        ref = weakref.ref(arg)
        loop.call_soon(seen.append, arg)
        del arg
        loop.run_until_complete(asyncio.sleep(0))
        seen.clear()
        gone = ref() is None  # the spare tuple does not keep it
        kept = loop.call_soon(seen.append, "a")
        held = kept._args
        loop.run_until_complete(asyncio.sleep(0))
        for i in range(3):
            loop.call_soon(seen.append, i)
        loop.run_until_complete(asyncio.sleep(0))
        gc.collect()
        return gone, held, kept._args is held, seen

    assert on_both(scenario) == (True, ("a",), True, ["a", 0, 1, 2])


def test_freed_timers_come_back_with_nothing_of_their_former_life(loop):
    # Freed TimerHandles are kept for reuse (csrc/timer.c): a new timer in
    # an old one's memory has its own state only.
    var = contextvars.ContextVar("var")
    out = []

    def cb(*args):
        out.append(args)

    def old_life():
        var.set("old")
        olds = [loop.call_later(50 + i, cb, "old", i) for i in range(N)]
        loop.set_debug(True)  # cancel() keeps the repr
        for h in olds[::2]:
            h.cancel()
        loop.set_debug(False)
        for h in olds:
            h._source_traceback = ["a traceback"]
        refs = [weakref.ref(h) for h in olds]
        ids = {id(h) for h in olds}
        loop._scheduled.clear()
        loop._timer_cancelled_count = 0
        del olds
        return refs, ids

    # More than are kept: some new timers are in the memory of these.
    N = 2000
    refs, ids = contextvars.copy_context().run(old_life)
    assert all(r() is None for r in refs)  # the weak references died
    var.set("new")
    # Made due in the past of the real clock, whatever the machine's uptime.
    t0 = loop.time() - N - 10.0
    loop.time = lambda: t0
    news = [loop.call_later(i, cb, "new", i) for i in range(N)]
    assert ids & {id(h) for h in news}  # some memory was reused
    for i, h in enumerate(news):
        assert type(h).__name__ == "TimerHandle" and isinstance(h, asyncio.TimerHandle)
        assert h._callback is cb and h._args == ("new", i)
        assert not h.cancelled() and h._scheduled and h._repr is None
        assert h._source_traceback is None and h._loop is loop
        assert h.when() == t0 + i and repr(h).startswith(f"<TimerHandle when={t0 + i} ")
        assert h._context[var] == "new"  # get_context() is 3.12+
        assert weakref.getweakrefcount(h) == 0 and gc.is_tracked(h)
    assert len({id(h._context) for h in news}) == N
    news[1].cancel()
    assert loop._timer_cancelled_count == 1 and news[1]._callback is None
    del loop.time  # the real clock: every timer is due
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == [("new", i) for i in range(N) if i != 1]
    assert loop._scheduled == [] and not any(h._scheduled for h in news)
    gc.collect()  # the collector walks reused timers without trouble


def test_a_finalizer_patched_in_runs_for_timers_in_reused_memory(loop):
    ttype = type(loop.call_later(10, print))
    loop._scheduled.clear()
    for _ in range(3):
        [loop.call_later(10, print) for _ in range(200)]  # freed at once
        loop._scheduled.clear()
    gone = []
    ttype.__del__ = lambda self: gone.append(self._args)
    try:
        for round_ in range(2):
            [loop.call_later(10, print, round_, i) for i in range(200)]
            loop._scheduled.clear()
            assert sorted(gone) == [(r, i) for r in range(round_ + 1) for i in range(200)]
    finally:
        del ttype.__del__
    [loop.call_later(10, print) for _ in range(200)]
    loop._scheduled.clear()
    assert len(gone) == 400


@pytest.mark.parametrize("meddle", [False, True])
def test_the_rebuild_of_a_mostly_cancelled_heap_is_heapqs(meddle):
    # The rebuild keeps the core's copy of the heap (sched.c): the layouts
    # after it and after later pushes and pops are heapq's, also when code
    # run during the rebuild (an item's _cancelled in Python) pushes a timer.
    def scenario(loop):
        out = []
        base = 1000.0
        handles = []

        class Item:
            """Not a Handle: its _cancelled is asked for in Python."""

            _when = base + 5.5
            _scheduled = True

            @property
            def _cancelled(self):
                if meddle and len(handles) == 160:
                    handles.append(loop.call_at(base + 0.25, out.append, "in"))
                return False

            def __lt__(self, other):
                return self._when < other._when

            def __gt__(self, other):
                return self._when > other._when

            def _run(self):
                out.append("item")

        def layout():
            index = {id(h): i for i, h in enumerate(handles)}
            return [index.get(id(h), -1) for h in loop._scheduled]

        loop.time = lambda: base
        for i in range(160):
            handles.append(loop.call_at(base + 1 + (i * 37 % 13) * 0.5, out.append, i))
        loop._scheduled.append(Item())
        for h in handles[::3] + handles[1::3]:
            h.cancel()
        layouts = [layout(), loop._timer_cancelled_count]
        loop._run_once()  # the rebuild: more than half are cancelled
        layouts += [layout(), loop._timer_cancelled_count]
        for i in range(40):
            handles.append(loop.call_at(base + 2 + (i * 7 % 5), out.append, -i))
        layouts.append(layout())
        loop.time = lambda: base + 4.2
        loop._run_once()
        layouts += [layout(), out, [h._scheduled for h in handles]]
        return layouts

    layouts = on_both(scenario)
    assert layouts[1] == 107 and layouts[3] == 0 and len(layouts[2]) == 54 + meddle


# 3.11 and 3.12's _run_once clamps a NaN select() timeout to 0 and runs the
# timer; 3.13's keeps the NaN, and select() raises.
NAN_WHEN = (
    (ValueError, "cannot convert float NaN to integer") if sys.version_info >= (3, 13) else "ran"
)


@pytest.mark.parametrize(
    ("method", "when", "raised"),
    [
        ("call_at", float("nan"), NAN_WHEN),
        ("call_later", float("nan"), NAN_WHEN),
        ("call_at", "decimal", (TypeError, "unsupported operand type(s) for -: "
                                           "'decimal.Decimal' and 'float'")),
        ("call_later", "decimal", (TypeError, "unsupported operand type(s) for +: "
                                              "'float' and 'decimal.Decimal'")),
    ],
)
def test_a_when_the_loop_cannot_wait_for_raises_what_asyncio_raises(method, when, raised):
    # Stock asyncio raises once the timer is first in its heap (the select
    # timeout is `when - loop.time()`), out of run_until_complete, and the
    # timer never runs; cdaphne raises the same at the call, as uvloop does.
    # It ran the timer before (what 3.11 and 3.12 do with a NaN).
    from decimal import Decimal

    def scenario(loop):
        done = loop.create_future()
        value = Decimal(loop.time()) if when == "decimal" else when
        try:
            getattr(loop, method)(value, done.set_result, "ran")
            return loop.run_until_complete(done)
        except (ValueError, TypeError) as exc:
            return type(exc), str(exc)
        finally:
            loop._scheduled.clear()

    assert on_both(scenario) == raised


@pytest.mark.parametrize("when", [10**400, -(10**400)])
def test_a_when_beyond_a_float_behind_a_timer_that_ends_the_run(when):
    # An int no double holds as _when: stock asyncio compares it with
    # the loop's time in Python (no error) once the timer before it ran,
    # and raises OverflowError only where it waits for it (`when -
    # loop.time()`); our core read every first _when as a double and
    # raised OverflowError out of run_until_complete after the first.
    def scenario(loop):
        ran = []
        done = loop.create_future()
        loop.call_at(when, ran.append, "huge")
        loop.call_later(0.01, done.set_result, "ran")
        try:
            return loop.run_until_complete(done), ran
        except OverflowError as exc:
            return str(exc)
        finally:
            loop._scheduled.clear()

    # A negative one is first in the heap at the first wait: both raise.
    assert on_both(scenario) == (
        "int too large to convert to float" if when < 0 else ("ran", []))


def test_a_replaced_loop_dict_is_the_one_read():
    # loop.__dict__ = a copy: the C core kept reading the old dict, so
    # set_debug(True) then get_debug() said False and a task factory set
    # afterwards was never called.
    def scenario(loop):
        loop.__dict__ = dict(loop.__dict__)
        loop.set_debug(True)
        debug = loop.get_debug()
        loop.set_debug(False)
        made = []

        def factory(loop, coro, **kwargs):
            made.append(coro.__name__)
            return asyncio.Task(coro, loop=loop, **kwargs)

        loop.set_task_factory(factory)

        async def work():
            await asyncio.sleep(0)
            return 7

        result = loop.run_until_complete(loop.create_task(work()))
        loop.set_task_factory(None)
        return debug, made, result, vars(loop) is loop.__dict__

    assert on_both(scenario) == (True, ["work"], 7, True)


def test_a_timer_copies_as_asyncios_does():
    """copy.copy of a call_later handle works (it raised "cannot pickle
    'cdaphne._cdaphne.TimerHandle' object"): the copy has the
    original's when, callback, arguments and state, and cancelling it leaves
    the original scheduled; the type can be made as asyncio's can."""
    import copy

    def scenario(loop):
        ran = []
        h = loop.call_at(loop.time() + 0.01, ran.append, 1)
        c = copy.copy(h)
        out = [(type(c).__name__, type(c) is type(h), c.when() == h.when(),
                c._callback == h._callback, c._args, c.cancelled(), c._scheduled)]
        c.cancel()
        made = type(h)(loop.time() + 1, print, (), loop)
        out.append((made.cancelled(), made._scheduled, made < h, h < made))
        loop.run_until_complete(asyncio.sleep(0.05))
        return out, ran, h.cancelled(), loop._timer_cancelled_count

    same = ("TimerHandle", True, True, True, (1,), False, True)
    assert on_both(scenario) == ([same, (False, False, False, True)], [1], False, 1)
