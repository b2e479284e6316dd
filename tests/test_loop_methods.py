"""BaseEventLoop methods in C on the loop class (csrc/loopmeth.c): the loop's
own methods, which subclasses, class patches and instance attributes override
as they would asyncio's."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import weakref

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
