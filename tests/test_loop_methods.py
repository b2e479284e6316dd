"""BaseEventLoop methods in C on the loop class (csrc/loopmeth.c): the loop's
own methods, which subclasses, class patches and instance attributes override
as they would asyncio's."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import weakref
from typing import Any
from unittest import mock

import pytest

from cdaphne._cdaphne import LoopMethods
from cdaphne.loop import LibuvEventLoop, new_event_loop


@pytest.fixture
def loop():
    loop = new_event_loop()
    yield loop
    loop.close()


def test_create_future_is_a_c_method_of_the_class_not_of_the_instance(loop):
    assert "create_future" not in vars(loop)
    assert LibuvEventLoop.__mro__[1] is LoopMethods
    assert LibuvEventLoop.create_future is LoopMethods.__dict__["create_future"]
    assert LibuvEventLoop.create_future is not asyncio.BaseEventLoop.create_future
    fut = LibuvEventLoop.create_future(loop)
    assert type(fut) is asyncio.Future and fut.get_loop() is loop
    with pytest.raises(TypeError):
        loop.create_future(1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        LibuvEventLoop.create_future(object())  # type: ignore[arg-type]


def test_create_future_makes_asyncios_future_in_and_out_of_the_loop(loop):
    outside = loop.create_future()
    other = new_event_loop()
    try:
        foreign = other.create_future()
    finally:
        other.close()

    async def main() -> asyncio.Future:
        inside = loop.create_future()
        # Another loop's future, made while this one runs.
        assert other.create_future().get_loop() is other
        loop.call_soon(inside.set_result, 5)
        assert await inside == 5
        return inside

    inside = loop.run_until_complete(main())
    for fut, owner in ((outside, loop), (inside, loop), (foreign, other)):
        assert type(fut) is asyncio.Future and fut.get_loop() is owner
    assert repr(outside) == "<Future pending>"
    assert repr(inside) == "<Future finished result=5>"
    assert outside._source_traceback is None


def test_subclass_override_and_super(loop):
    calls = []

    class Loop(LibuvEventLoop):
        def create_future(self):  # type: ignore[no-untyped-def]
            calls.append("sub")
            return super().create_future()

    sub = Loop()
    try:
        fut = sub.create_future()
        assert type(fut) is asyncio.Future and fut.get_loop() is sub
        assert calls == ["sub"]
    finally:
        sub.close()


def test_a_class_patch_made_after_the_loop_exists_is_used(loop):
    made = []

    class Marked(asyncio.Future):
        pass

    def patched(self):  # type: ignore[no-untyped-def]
        made.append(self)
        return Marked(loop=self)

    async def main() -> None:
        # asyncio.wait and shield ask the loop for their futures.
        done, _ = await asyncio.wait([asyncio.ensure_future(asyncio.sleep(0))])
        assert len(done) == 1
        await asyncio.shield(asyncio.sleep(0))

    LibuvEventLoop.create_future = patched  # type: ignore[method-assign]
    try:
        assert type(loop.create_future()) is Marked
        loop.run_until_complete(main())
        assert len(made) >= 3 and all(m is loop for m in made)
    finally:
        del LibuvEventLoop.create_future
    assert type(loop.create_future()) is asyncio.Future


def test_a_patch_of_base_event_loop_is_used_too(loop):
    """What comes after LoopMethods in the MRO decides: a patch of
    BaseEventLoop.create_future applies to this loop as to asyncio's."""
    original = asyncio.BaseEventLoop.create_future
    calls = []

    def patched(self):  # type: ignore[no-untyped-def]
        calls.append(self)
        return original(self)

    assert type(loop.create_future()) is asyncio.Future
    asyncio.BaseEventLoop.create_future = patched  # type: ignore[method-assign]
    try:
        fut = loop.create_future()
        assert calls == [loop] and fut.get_loop() is loop
        # Through the server's own futures too (run_in_executor's hop).
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            assert loop.run_until_complete(loop.run_in_executor(pool, int, "3")) == 3
        assert len(calls) == 2
    finally:
        asyncio.BaseEventLoop.create_future = original  # type: ignore[method-assign]
    loop.create_future()
    assert len(calls) == 2


def test_an_instance_attribute_wins(loop):
    class Marked(asyncio.Future):
        pass

    loop.create_future = lambda: Marked(loop=loop)  # type: ignore[method-assign]
    assert type(loop.create_future()) is Marked

    async def main() -> None:
        await asyncio.wait([asyncio.ensure_future(asyncio.sleep(0))])

    loop.run_until_complete(main())
    del loop.create_future
    assert type(loop.create_future()) is asyncio.Future


def test_debug_mode_takes_asyncios_method_and_its_traceback(loop):
    """In debug mode the future's source traceback is asyncio's: its last
    entry is BaseEventLoop.create_future's frame."""
    plain = asyncio.SelectorEventLoop()
    try:
        for lp in (loop, plain):
            lp.set_debug(True)
            fut = lp.create_future()
            last = fut._source_traceback[-1]
            assert last.name == "create_future"
            assert last.filename.endswith("base_events.py")
            lp.set_debug(False)
            assert lp.create_future()._source_traceback is None
    finally:
        plain.close()


def test_asyncio_wait_and_shield_on_the_loop(loop):
    async def value(v: int) -> int:
        await asyncio.sleep(0)
        return v

    async def main() -> None:
        tasks = [asyncio.ensure_future(value(i)) for i in range(5)]
        done, pending = await asyncio.wait(tasks)
        assert not pending and sorted(t.result() for t in done) == list(range(5))
        done, pending = await asyncio.wait(
            [asyncio.ensure_future(asyncio.sleep(10)), asyncio.ensure_future(value(1))],
            return_when=asyncio.FIRST_COMPLETED,
        )
        assert [t.result() for t in done] == [1]
        for t in pending:
            t.cancel()
        assert await asyncio.shield(value(7)) == 7
        inner = asyncio.ensure_future(asyncio.sleep(0.01, "kept"))
        outer = asyncio.shield(inner)
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer
        assert await inner == "kept"

    loop.run_until_complete(main())


def test_a_closed_loop_is_not_kept_alive():
    lp = new_event_loop()

    async def main() -> None:
        running = asyncio.get_running_loop()
        fut = running.create_future()
        running.call_soon(fut.set_result, None)
        await fut

    lp.run_until_complete(main())
    lp.close()
    ref = weakref.ref(lp)
    del lp
    gc.collect()
    assert ref() is None


# ---- Every fast method of the loop is a method of the class (issue 11).
#
# Each name is what asyncio (or the app) calls on the loop; the workload
# below reaches every one of them, directly and through asyncio's own
# code (Future callbacks, sleep, ensure_future, TimerHandle.cancel).
FAST_METHODS = [
    "call_soon",
    "call_later",
    "call_at",
    "call_soon_threadsafe",
    "create_task",
    "run_in_executor",
    "get_debug",
    "create_future",
    "time",
    "_run_once",
    "_timer_handle_cancelled",
    "_write_to_self",
]


def _asyncios_owner(name: str) -> type:
    """The asyncio class whose function asyncio's selector loop runs for
    `name`: BaseEventLoop, but BaseSelectorEventLoop for _write_to_self."""
    return next(k for k in asyncio.SelectorEventLoop.__mro__ if name in vars(k))


def _noop() -> None:
    pass


def _workload(loop: asyncio.AbstractEventLoop) -> None:
    async def child() -> int:
        await asyncio.sleep(0)
        return 1

    async def main() -> None:
        await asyncio.sleep(0)
        await asyncio.sleep(0.001)
        assert await asyncio.ensure_future(child()) == 1
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            assert await loop.run_in_executor(pool, int, "2") == 2
        fut = loop.create_future()
        loop.call_soon_threadsafe(fut.set_result, 3)
        assert await fut == 3
        loop.call_soon(_noop)
        loop.call_at(loop.time() + 10, _noop).cancel()
        loop.call_later(10, _noop).cancel()
        loop.get_debug()

    loop.run_until_complete(main())


def _recorder(name: str, calls: list[str], original: Any) -> Any:
    def method(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(name)
        return original(self, *args, **kwargs)

    method.__name__ = name
    return method


def _asyncios_and_ours() -> list[type[asyncio.AbstractEventLoop]]:
    return [asyncio.SelectorEventLoop, LibuvEventLoop]


@pytest.mark.parametrize("name", FAST_METHODS)
@pytest.mark.parametrize("base", _asyncios_and_ours(), ids=["asyncio", "cdaphne"])
def test_a_subclass_override_of_a_fast_method_is_used(base, name):
    calls: list[str] = []

    def override(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(name)
        return getattr(super(Sub, self), name)(*args, **kwargs)

    Sub = type("Sub", (base,), {name: override})
    loop = Sub()
    try:
        assert name not in vars(loop)
        _workload(loop)
    finally:
        loop.close()
    assert calls, f"{base.__name__} subclass: {name} override never called"


@pytest.mark.parametrize("name", FAST_METHODS)
@pytest.mark.parametrize("base", _asyncios_and_ours(), ids=["asyncio", "cdaphne"])
def test_a_class_patch_made_after_the_loop_exists_is_used_for_every_method(base, name):
    calls: list[str] = []
    loop = base()
    try:
        _workload(loop)  # warm: whatever is cached is cached now
        with mock.patch.object(base, name, _recorder(name, calls, getattr(base, name))):
            _workload(loop)
        n = len(calls)
        _workload(loop)  # the patch is gone again
        assert len(calls) == n
    finally:
        loop.close()
    assert calls, f"{base.__name__}.{name} patched after the loop existed: never called"


@pytest.mark.parametrize("name", FAST_METHODS)
@pytest.mark.parametrize("base", _asyncios_and_ours(), ids=["asyncio", "cdaphne"])
def test_a_patch_of_base_event_loop_is_used_for_every_method(base, name):
    calls: list[str] = []
    owner = _asyncios_owner(name)
    assert owner is asyncio.BaseEventLoop or name == "_write_to_self"
    loop = base()
    try:
        _workload(loop)
        original = owner.__dict__[name]
        with mock.patch.object(owner, name, _recorder(name, calls, original)):
            _workload(loop)
    finally:
        loop.close()
    assert calls, f"{owner.__name__}.{name} patched: never called on {base.__name__}"


@pytest.mark.parametrize("name", FAST_METHODS)
@pytest.mark.parametrize("base", _asyncios_and_ours(), ids=["asyncio", "cdaphne"])
def test_an_instance_attribute_wins_for_every_method(base, name):
    calls: list[str] = []
    loop = base()
    try:
        bound = getattr(loop, name)

        def instead(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(name)
            return bound(*args, **kwargs)

        setattr(loop, name, instead)
        _workload(loop)
        delattr(loop, name)
        n = len(calls)
        _workload(loop)
        assert len(calls) == n
    finally:
        loop.close()
    assert calls


def test_the_fast_methods_are_c_methods_of_the_class_not_of_the_instance(loop):
    for name in FAST_METHODS:
        assert name not in vars(loop), name
        if name != "time":
            assert getattr(LibuvEventLoop, name) is LoopMethods.__dict__[name], name


def test_a_class_patch_of_time_moves_the_timers_call_later_makes(loop):
    when = loop.call_later(5, _noop).when()
    assert abs(when - (loop.time() + 5)) < 1
    with mock.patch.object(LibuvEventLoop, "time", lambda self: 1000.0):
        assert loop.call_later(5, _noop).when() == 1005.0
        assert loop.call_later(5.5, _noop).when() == 1005.5
    assert loop.call_later(5, _noop).when() < 1000.0 or loop.time() > 995


def test_two_loops_used_in_turn_each_get_their_own_handles():
    """The methods find a loop's core through the module's note of the last
    one used: loops used in turn must never swap their queues."""
    a, b = new_event_loop(), new_event_loop()
    out: list[str] = []
    try:
        for i in range(3):
            a.call_soon(out.append, f"a{i}")
            b.call_soon(out.append, f"b{i}")
            a.call_later(0, out.append, f"A{i}")
            b.call_at(b.time(), out.append, f"B{i}")
        a.call_soon(a.stop)
        a.run_forever()
        a.run_until_complete(asyncio.sleep(0.01))
        assert out == ["a0", "a1", "a2", "A0", "A1", "A2"]
        out.clear()
        b.run_until_complete(asyncio.sleep(0.01))
        assert out == ["b0", "b1", "b2", "B0", "B1", "B2"]
        assert len(a._ready) == len(b._ready) == 0
    finally:
        a.close()
    with pytest.raises(RuntimeError, match="closed"):
        a.call_soon(print)
    b.call_soon(print).cancel()  # the other loop is unaffected
    b.close()


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_loop_dropped_without_close_leaves_the_next_loop_working():
    for _ in range(3):
        lp = new_event_loop()
        lp.call_soon(print).cancel()
        del lp  # never closed (asyncio warns): its core goes with it
        gc.collect()
    lp = new_event_loop()
    try:
        assert lp.run_until_complete(asyncio.sleep(0, "ok")) == "ok"
    finally:
        lp.close()


@pytest.mark.parametrize("base", _asyncios_and_ours(), ids=["asyncio", "cdaphne"])
def test_a_signal_handler_and_another_thread_wake_the_loop_through_its_write_to_self(base):
    """asyncio wakes the loop with self._write_to_self() from a signal
    handler and from call_soon_threadsafe in another thread: a subclass's
    override sees both, and still wakes the loop through super()."""
    import os
    import signal
    import threading

    calls: list[str] = []

    class Sub(base):  # type: ignore[misc, valid-type]
        def _write_to_self(self) -> None:
            calls.append(threading.current_thread().name)
            super()._write_to_self()

    loop = Sub()
    try:
        assert "_write_to_self" not in vars(loop)
        got = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR1, got.set_result, "signal")
        loop.call_later(0.01, os.kill, os.getpid(), signal.SIGUSR1)
        assert loop.run_until_complete(asyncio.wait_for(got, 10)) == "signal"
        assert calls == ["MainThread"]
        loop.remove_signal_handler(signal.SIGUSR1)

        fut = loop.create_future()
        t = threading.Thread(
            target=loop.call_soon_threadsafe, args=(fut.set_result, "thread"), name="other"
        )
        loop.call_soon(t.start)
        assert loop.run_until_complete(asyncio.wait_for(fut, 10)) == "thread"
        t.join()
        assert calls == ["MainThread", "other"]
    finally:
        loop.close()


def test_each_method_has_its_own_doc() -> None:
    # As BaseEventLoop's methods have; found by the fuzz op introspect_op
    # (PyType_FromSpec stored the type's doc over the __doc__ getset).
    docs = {name: LoopMethods.__dict__[name].__doc__ for name in FAST_METHODS
            if name != "time"}
    assert docs["call_soon"].startswith("call_soon("), docs["call_soon"]
    assert len(set(docs.values())) == len(docs), docs


def test_the_methods_are_method_descriptors_that_bind_check_and_describe_themselves(loop):
    import inspect

    for name in FAST_METHODS:
        if name == "time":
            continue
        meth = LoopMethods.__dict__[name]
        assert inspect.ismethoddescriptor(meth), name
        assert meth.__name__ == name and meth.__qualname__ == f"LoopMethods.{name}"
        assert meth.__objclass__ is LoopMethods and meth.__doc__
        assert repr(meth) == f"<method '{name}' of 'LoopMethods' objects>"
        assert meth.__get__(None, LibuvEventLoop) is meth
        bound = getattr(loop, name)
        assert bound.__self__ is loop and bound.__func__ is meth and bound == getattr(loop, name)
        with pytest.raises(TypeError, match="doesn't apply to a 'int' object"):
            meth.__get__(1, int)
        with pytest.raises(TypeError, match="doesn't apply to a 'object' object"):
            meth(object())
        with pytest.raises(TypeError, match="needs an argument"):
            meth()
    assert LoopMethods.__dict__["get_debug"](loop) is False
    loop.set_debug(True)
    assert LibuvEventLoop.get_debug(loop) is True and loop.get_debug() is True
    ran: list[int] = []
    LoopMethods.__dict__["call_soon"](loop, ran.append, 1)
    loop.call_soon(ran.append, 2)
    loop.run_until_complete(asyncio.sleep(0))
    assert ran == [1, 2]
