"""Red team, session 8: cdaphne.layers.InMemoryChannelLayer (csrc/layer.c)
against hostile app values and receivers that vanish (found sound)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from channels.exceptions import ChannelFull

from cdaphne.layers import InMemoryChannelLayer
from cdaphne.loop import new_event_loop


def run(coro_fn):
    loop = new_event_loop()
    try:
        return loop.run_until_complete(coro_fn())
    finally:
        loop.close()


@pytest.mark.parametrize("name", [1, b"abc", None, "a" * 100, "bad name", "x!y!z", "\u00e9", ""])
def test_invalid_names_raise_type_error_everywhere(name):
    async def main():
        layer = InMemoryChannelLayer()
        for call in (
            lambda: layer.send(name, {"type": "x"}),
            lambda: layer.receive(name),
            lambda: layer.group_add(name, "chan"),
            lambda: layer.group_send(name, {"type": "x"}),
        ):
            with pytest.raises(TypeError):
                await call()
        return layer.stats()["channels"]

    assert run(main) == 0


def test_a_99_character_name_is_valid():
    async def main():
        layer = InMemoryChannelLayer()
        await layer.send("a" * 99, {"type": "x"})
        return await layer.receive("a" * 99)

    assert run(main) == {"type": "x"}


@pytest.mark.parametrize("message", [None, [1], "str", 1])
def test_non_dict_messages_raise_as_channels_does(message):
    async def main():
        with pytest.raises(AssertionError):
            await InMemoryChannelLayer().send("c", message)

    run(main)


def test_a_message_changed_after_send_is_delivered_as_sent():
    async def main():
        layer = InMemoryChannelLayer()
        m = {"type": "t", "l": [1, 2], "d": {"k": "v"}}
        await layer.send("c", m)
        m["l"].append(3)
        m["d"]["k"] = "changed"
        m["type"] = "z"
        return await layer.receive("c")

    assert run(main) == {"type": "t", "l": [1, 2], "d": {"k": "v"}}


def test_deepcopy_hooks_that_mutate_raise_or_interrupt():
    class Grows:
        def __init__(self, d):
            self.d = d

        def __deepcopy__(self, memo):
            for i in range(100):
                self.d[f"k{i}"] = [i]  # the message dict, mid-copy
            return "copied"

    class Raises:
        def __deepcopy__(self, memo):
            raise RuntimeError("no copy")

    class Interrupts:
        def __deepcopy__(self, memo):
            raise KeyboardInterrupt

    async def main():
        layer = InMemoryChannelLayer()
        m = {"type": "t"}
        m["g"] = Grows(m)
        await layer.send("c", m)
        assert (await layer.receive("c"))["g"] == "copied"
        with pytest.raises(RuntimeError):
            await layer.send("c", {"type": "t", "x": Raises()})
        await layer.group_add("g", "c")
        with pytest.raises(KeyboardInterrupt):
            await layer.group_send("g", {"type": "t", "x": Interrupts()})
        d = {"type": "t"}
        d["self"] = d
        await layer.send("c", d)
        r = await layer.receive("c")
        assert r["self"] is r and r is not d
        return layer.stats()["messages"]

    assert run(main) == 0


def test_group_changes_from_a_deepcopy_hook_during_group_send():
    async def main():
        layer = InMemoryChannelLayer()
        for i in range(50):
            await layer.group_add("big", f"c{i}")

        class Meddles:
            def __deepcopy__(self, memo):
                layer._core.group_discard("big", "c10")
                layer._core.flush()
                return 1

        await layer.group_send("big", {"type": "t", "x": Meddles()})
        await layer.group_add("big", "after")
        await layer.group_send("big", {"type": "t"})
        return await layer.receive("after")

    assert run(main) == {"type": "t"}


def test_capacity_expiry_and_a_cancel_racing_each_send():
    async def main():
        layer = InMemoryChannelLayer(capacity=3, expiry=0.2)
        for i in range(3):
            await layer.send("cap", {"type": "t", "i": i})
        with pytest.raises(ChannelFull):
            await layer.send("cap", {"type": "t"})
        await asyncio.sleep(0.4)
        await layer.send("cap", {"type": "t", "i": 9})
        assert await layer.receive("cap") == {"type": "t", "i": 9}
        for i in range(500):
            task = asyncio.ensure_future(layer.receive("cx"))
            await asyncio.sleep(0)
            await layer.send("cx", {"type": "t", "i": i})
            task.cancel()
            try:
                got = await task
            except asyncio.CancelledError:
                got = await asyncio.wait_for(layer.receive("cx"), 1)
            assert got["i"] == i
        return layer.stats()["messages"]

    assert run(main) == 0


def test_a_receiver_whose_loop_closed_loses_no_message():
    layer = InMemoryChannelLayer()
    other = new_event_loop()
    other.create_task(layer.receive("c1"))
    other.run_until_complete(asyncio.sleep(0.01))
    other.close()  # the receive() task never finished

    def thread_receiver():
        loop = new_event_loop()
        loop.create_task(layer.receive("c2"))
        loop.run_until_complete(asyncio.sleep(0.02))
        loop.close()

    t = threading.Thread(target=thread_receiver)
    t.start()
    t.join()

    async def main():
        await layer.send("c1", {"type": "a"})
        await layer.send("c2", {"type": "b"})
        return [
            await asyncio.wait_for(layer.receive("c1"), 2),
            await asyncio.wait_for(layer.receive("c2"), 2),
        ]

    assert run(main) == [{"type": "a"}, {"type": "b"}]
