"""Black-box tests of the in-memory channel layer.

Every behaviour is checked against cdaphne's C layer and, as the reference,
Channels' own ``InMemoryChannelLayer``. Where Channels' layer has a known bug
its parameter is a strict xfail naming the bug. The cases follow Channels'
``tests/test_inmemorychannel.py`` and channels_redis' ``tests/test_core.py``,
plus concurrency, thread, loop, expiry and memory cases of our own.
"""

from __future__ import annotations

import asyncio
import gc
import random
import re
import threading
import time
import tracemalloc

import pytest
from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer as ChannelsLayer

from cdaphne.layers import InMemoryChannelLayer as CdaphneLayer


def impls(channels_bug: str | None = None):
    """Parametrize cls over both layers; Channels' one xfails on a known bug."""
    marks = [pytest.mark.xfail(strict=True, reason=channels_bug)] if channels_bug else []
    return pytest.mark.parametrize(
        "cls",
        [
            pytest.param(CdaphneLayer, id="cdaphne"),
            pytest.param(ChannelsLayer, id="channels", marks=marks),
        ],
    )


async def assert_nothing(layer, channel: str, timeout: float = 0.2) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive(channel), timeout)


async def recv(layer, channel: str, timeout: float = 2.0) -> dict:
    return await asyncio.wait_for(layer.receive(channel), timeout)


# ---- basics (Channels' and channels_redis' suites) ------------------------


@impls()
@pytest.mark.asyncio
async def test_send_receive(cls):
    layer = cls(capacity=3)
    await layer.send("test-channel-1", {"type": "test.message", "text": "Ahoy-hoy!"})
    await layer.send("test-channel-1", {"type": "test.message", "text": "Ahoy-hoy!"})
    for _ in range(2):
        message = await recv(layer, "test-channel-1")
        assert message == {"type": "test.message", "text": "Ahoy-hoy!"}
    await assert_nothing(layer, "test-channel-1")


@impls()
@pytest.mark.asyncio
async def test_receive_waits_for_a_later_send(cls):
    layer = cls(capacity=3)
    task = asyncio.create_task(layer.receive("test-channel-1"))
    await asyncio.sleep(0.05)
    assert not task.done()
    await layer.send("test-channel-1", {"type": "test.message", "text": "Ahoy-hoy!"})
    message = await asyncio.wait_for(task, 2)
    assert message["text"] == "Ahoy-hoy!"


@impls()
@pytest.mark.asyncio
async def test_multi_send_receive_keeps_order(cls):
    layer = cls(capacity=3)
    for i in (1, 2, 3):
        await layer.send("test-channel-3", {"type": f"message.{i}"})
    for i in (1, 2, 3):
        assert (await recv(layer, "test-channel-3"))["type"] == f"message.{i}"


@impls()
@pytest.mark.asyncio
async def test_send_capacity(cls):
    layer = cls(capacity=3)
    for _ in range(3):
        await layer.send("test-channel-1", {"type": "test.message"})
    with pytest.raises(ChannelFull):
        await layer.send("test-channel-1", {"type": "test.message"})
    # Other channels are unaffected; reading makes room again.
    await layer.send("test-channel-2", {"type": "test.message"})
    await recv(layer, "test-channel-1")
    await layer.send("test-channel-1", {"type": "test.message"})


@impls("channel_capacity patterns are never compiled: the first send() crashes")
@pytest.mark.asyncio
async def test_send_specific_capacity(cls):
    layer = cls(capacity=3, channel_capacity={"one": 1, "tiny*": 2, re.compile(r"^big"): 5})
    await layer.send("one", {"type": "test.message"})
    with pytest.raises(ChannelFull):
        await layer.send("one", {"type": "test.message"})
    for _ in range(2):
        await layer.send("tiny-1", {"type": "test.message"})
    with pytest.raises(ChannelFull):
        await layer.send("tiny-1", {"type": "test.message"})
    for _ in range(5):
        await layer.send("big.queue", {"type": "test.message"})
    with pytest.raises(ChannelFull):
        await layer.send("big.queue", {"type": "test.message"})
    for _ in range(3):
        await layer.send("other", {"type": "test.message"})
    with pytest.raises(ChannelFull):
        await layer.send("other", {"type": "test.message"})


@impls("channel_capacity patterns are never compiled: the first send() crashes")
@pytest.mark.asyncio
async def test_capacity_pattern_on_process_local_prefix(cls):
    # A pattern names the part up to and including "!", so it covers every
    # channel new_channel() makes; each channel still has its own queue.
    layer = cls(capacity=10, channel_capacity={"specific..inmemory!": 2})
    first = await layer.new_channel()
    second = await layer.new_channel()
    for name in (first, second):
        await layer.send(name, {"type": "m"})
        await layer.send(name, {"type": "m"})
        with pytest.raises(ChannelFull):
            await layer.send(name, {"type": "m"})


@impls()
@pytest.mark.asyncio
async def test_process_local_send_receive(cls):
    layer = cls(capacity=3)
    channel_name = await layer.new_channel()
    await layer.send(channel_name, {"type": "test.message", "text": "Local only please"})
    message = await recv(layer, channel_name)
    assert message == {"type": "test.message", "text": "Local only please"}


@impls()
@pytest.mark.asyncio
async def test_new_channel_names_are_valid_and_unique(cls):
    layer = cls()
    names = {await layer.new_channel() for _ in range(2000)}
    assert len(names) == 2000
    for name in list(names)[:50]:
        assert layer.require_valid_channel_name(name)
        assert "!" in name
    custom = await layer.new_channel(prefix="chat")
    assert custom.startswith("chat")


@impls("new_channel() draws names from the random module: a reseed repeats them")
@pytest.mark.asyncio
async def test_random_reseed_does_not_repeat_channel_names(cls):
    layer = cls()
    random.seed(1)
    name_1 = await layer.new_channel()
    random.seed(1)
    name_2 = await layer.new_channel()
    assert name_1 != name_2


@impls()
@pytest.mark.asyncio
async def test_reject_bad_channel(cls):
    layer = cls()
    with pytest.raises(TypeError):
        await layer.send("=+135!", {"type": "foom"})
    with pytest.raises(TypeError):
        await layer.receive("=+135!")
    with pytest.raises(TypeError):
        await layer.group_add("test-group", "=+135!")
    with pytest.raises(TypeError):
        await layer.group_discard("test-group", "=+135!")


NAMES = [
    "a",
    "a" * 99,
    "a" * 100,
    "",
    "Test-chan_1.x",
    "a!b",
    "a!",
    "!a",
    "a!!b",
    "a!b!c",
    "a b",
    "a/b",
    "é",
    "a!é",  # \w after the ! is Unicode-aware in Channels' regex
    "a\n",  # Channels' regex ends in $, which accepts one trailing newline
    "a\nb",
    "١٢٣",  # \d is Unicode-aware too
    "chan\x00",
]


@pytest.mark.asyncio
@pytest.mark.parametrize("name", NAMES)
async def test_name_validation_matches_channels(name):
    """Our C fast path and Channels must agree on every name."""
    ours, theirs = CdaphneLayer(), ChannelsLayer()
    results = []
    for layer in (ours, theirs):
        try:
            await layer.send(name, {"type": "x"})
            results.append("ok")
        except TypeError:
            results.append("TypeError")
    assert results[0] == results[1]
    group_results = []
    for layer in (ours, theirs):
        try:
            await layer.group_add(name, "chan")
            group_results.append("ok")
        except TypeError:
            group_results.append("TypeError")
    assert group_results[0] == group_results[1]


@impls()
@pytest.mark.asyncio
@pytest.mark.parametrize("bad", [123, None, b"bytes", ["list"]])
async def test_non_str_names_raise_type_error(cls, bad):
    layer = cls()
    with pytest.raises(TypeError):
        await layer.send(bad, {"type": "x"})
    with pytest.raises(TypeError):
        await layer.group_send(bad, {"type": "x"})
    with pytest.raises(TypeError):
        await layer.group_add(bad, "chan")


@impls()
@pytest.mark.asyncio
async def test_message_must_be_a_dict(cls):
    layer = cls()
    with pytest.raises(AssertionError):
        await layer.send("chan", ["not", "a", "dict"])
    with pytest.raises(AssertionError):
        await layer.group_send("group", "text")
    with pytest.raises(AssertionError):
        await layer.send("chan", {"type": "x", "__asgi_channel__": "chan"})


@impls()
def test_extensions_and_defaults(cls):
    layer = cls()
    assert "groups" in layer.extensions and "flush" in layer.extensions
    assert layer.expiry == 60
    assert layer.group_expiry == 86400
    assert layer.capacity == 100


@impls()
def test_unknown_config_keys_are_rejected_like_channels(cls):
    with pytest.raises(TypeError):
        cls(hosts=["redis://"])


# ---- groups -----------------------------------------------------------------


@impls()
@pytest.mark.asyncio
async def test_groups_basic(cls):
    layer = cls(capacity=3)
    await layer.group_add("test-group", "test-gr-chan-1")
    await layer.group_add("test-group", "test-gr-chan-2")
    await layer.group_add("test-group", "test-gr-chan-3")
    await layer.group_discard("test-group", "test-gr-chan-2")
    await layer.group_send("test-group", {"type": "message.1"})
    assert (await recv(layer, "test-gr-chan-1"))["type"] == "message.1"
    assert (await recv(layer, "test-gr-chan-3"))["type"] == "message.1"
    await assert_nothing(layer, "test-gr-chan-2")


@impls()
@pytest.mark.asyncio
async def test_group_add_and_discard_are_idempotent(cls):
    layer = cls()
    await layer.group_add("g", "c1")
    await layer.group_add("g", "c1")
    await layer.group_discard("g", "c2")
    await layer.group_discard("nobody", "c1")
    await layer.group_send("g", {"type": "once"})
    assert (await recv(layer, "c1"))["type"] == "once"
    await assert_nothing(layer, "c1")
    await layer.group_discard("g", "c1")
    await layer.group_discard("g", "c1")
    await layer.group_send("g", {"type": "never"})
    await assert_nothing(layer, "c1")


@impls()
@pytest.mark.asyncio
async def test_group_send_to_empty_or_unknown_group(cls):
    layer = cls()
    await layer.group_send("nobody-home", {"type": "x"})
    with pytest.raises(TypeError):
        await layer.group_send("bad name!", {"type": "x"})


@impls()
@pytest.mark.asyncio
async def test_groups_same_prefix(cls):
    layer = cls()
    names = [await layer.new_channel(prefix="test-gr-chan") for _ in range(3)]
    for name in names:
        await layer.group_add("test-group", name)
    await layer.group_send("test-group", {"type": "message.1"})
    for name in names:
        assert (await recv(layer, name))["type"] == "message.1"


@impls()
@pytest.mark.asyncio
@pytest.mark.parametrize("num_channels", [1, 10, 100])
async def test_groups_many_members(cls, num_channels):
    layer = cls(capacity=100)
    channels = []
    for i in range(num_channels):
        channel = await layer.new_channel(prefix=f"channel{i}")
        await layer.group_add("test-group", channel)
        channels.append(channel)
    await asyncio.wait_for(layer.group_send("test-group", {"type": "message.1"}), 5)
    for channel in channels:
        assert (await recv(layer, channel))["type"] == "message.1"


@impls()
@pytest.mark.asyncio
async def test_group_send_skips_full_members_silently(cls):
    layer = cls(capacity=3)
    channel = await layer.new_channel()
    await layer.group_add("test-group", channel)
    for i in range(1, 6):
        await layer.group_send("test-group", {"type": f"message.{i}"})
    for i in (1, 2, 3):
        assert (await recv(layer, channel))["type"] == f"message.{i}"
    await assert_nothing(layer, channel)


@impls()
@pytest.mark.asyncio
async def test_group_send_capacity_multiple_channels(cls):
    layer = cls(capacity=3)
    channel_1 = await layer.new_channel()
    channel_2 = await layer.new_channel(prefix="channel_2")
    await layer.group_add("test-group", channel_1)
    await layer.group_add("test-group", channel_2)
    await layer.send(channel_2, {"type": "message.0"})
    for i in (1, 2, 3):
        await layer.group_send("test-group", {"type": f"message.{i}"})
    for i in (1, 2, 3):
        assert (await recv(layer, channel_1))["type"] == f"message.{i}"
    for i in (0, 1, 2):
        assert (await recv(layer, channel_2))["type"] == f"message.{i}"
    await assert_nothing(layer, channel_2)


@pytest.mark.asyncio
async def test_group_send_logs_members_over_capacity(caplog):
    layer = CdaphneLayer(capacity=1)
    await layer.group_add("g", "a")
    await layer.group_add("g", "b")
    await layer.send("b", {"type": "fill"})
    with caplog.at_level("INFO", logger="cdaphne.layers"):
        await layer.group_send("g", {"type": "x"})
    assert [r.getMessage() for r in caplog.records] == ["1 of 2 channels over capacity in group g"]


@impls()
@pytest.mark.asyncio
async def test_flush_drops_messages_and_groups(cls):
    layer = cls()
    await layer.send("c1", {"type": "x"})
    await layer.group_add("g", "c2")
    await layer.flush()
    await assert_nothing(layer, "c1")
    await layer.group_send("g", {"type": "x"})
    await assert_nothing(layer, "c2")
    # Still usable afterwards.
    await layer.send("c1", {"type": "y"})
    assert (await recv(layer, "c1"))["type"] == "y"
    await layer.close()
    await layer.send("c1", {"type": "z"})
    assert (await recv(layer, "c1"))["type"] == "z"


@impls("flush() swaps the dict: a receive() already waiting is never woken")
@pytest.mark.asyncio
async def test_receive_pending_across_flush_still_works(cls):
    layer = cls()
    task = asyncio.create_task(layer.receive("c1"))
    await asyncio.sleep(0.01)
    await layer.flush()
    await layer.send("c1", {"type": "after"})
    assert (await asyncio.wait_for(task, 1))["type"] == "after"


# ---- copies -----------------------------------------------------------------


class Payload:
    def __init__(self, items):
        self.items = items

    def __eq__(self, other):
        return isinstance(other, Payload) and other.items == self.items


@impls()
@pytest.mark.asyncio
async def test_messages_are_deep_copied_on_send(cls):
    layer = cls()
    nested = {"list": [1, {"deep": [2, 3]}], "tuple": (1, [2]), "obj": Payload([1])}
    message = {"type": "x", "n": 1, "f": 1.5, "b": b"raw", "none": None, "t": True, "d": nested}
    await layer.send("c", message)
    nested["list"][1]["deep"].append(99)
    nested["tuple"][1].append(99)
    nested["obj"].items.append(99)
    message["type"] = "mutated"
    got = await recv(layer, "c")
    assert got["type"] == "x"
    assert got["d"]["list"] == [1, {"deep": [2, 3]}]
    assert got["d"]["tuple"] == (1, [2])
    assert got["d"]["obj"] == Payload([1])
    assert got is not message and got["d"] is not nested


@impls()
@pytest.mark.asyncio
async def test_group_members_get_independent_copies(cls):
    layer = cls()
    await layer.group_add("g", "a")
    await layer.group_add("g", "b")
    await layer.group_send("g", {"type": "x", "items": [1]})
    first = await recv(layer, "a")
    first["items"].append(2)
    second = await recv(layer, "b")
    assert second["items"] == [1]


@pytest.mark.asyncio
async def test_self_referencing_message_is_copied():
    layer = CdaphneLayer()
    loop_list: list = [1]
    loop_list.append(loop_list)
    await layer.send("c", {"type": "x", "l": loop_list})
    got = await recv(layer, "c")
    assert got["l"][1] is got["l"] and got["l"] is not loop_list


@pytest.mark.asyncio
async def test_immutable_values_are_shared_not_copied():
    layer = CdaphneLayer()
    text, blob = "x" * 1000, b"y" * 1000
    await layer.send("c", {"type": "x", "text": text, "bytes": blob})
    got = await recv(layer, "c")
    assert got["text"] is text and got["bytes"] is blob


# ---- expiry -----------------------------------------------------------------


@impls()
@pytest.mark.asyncio
async def test_expiry_single(cls):
    layer = cls(expiry=0.1)
    await layer.send("test-channel-1", {"type": "message.1"})
    assert len(layer.channels) == 1
    await asyncio.sleep(0.15)
    await assert_nothing(layer, "test-channel-1", 0.3)
    assert len(layer.channels) == 0


@impls()
@pytest.mark.asyncio
async def test_expiry_multi(cls):
    layer = cls(expiry=0.2)
    for i in (1, 2, 3):
        await layer.send("test-channel-1", {"type": f"message.{i}"})
    assert (await recv(layer, "test-channel-1"))["type"] == "message.1"
    await asyncio.sleep(0.3)
    await layer.send("test-channel-1", {"type": "message.4"})
    assert (await recv(layer, "test-channel-1"))["type"] == "message.4"
    await assert_nothing(layer, "test-channel-1", 0.3)
    assert len(layer.channels) == 0


@impls()
@pytest.mark.asyncio
async def test_message_expiry_earliest_message_expires(cls):
    # A 0.8 s margin for the second message (sent 1.2 s before the
    # receive, it expires 2 s after it was sent): 0.4 s was not enough
    # on a loaded machine under ASan ("Third!" came first).
    layer = cls(expiry=2.0)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "test.message", "text": "First!"})
    await asyncio.sleep(1.2)
    await layer.send(channel, {"type": "test.message", "text": "Second!"})
    await asyncio.sleep(1.2)
    await layer.send(channel, {"type": "test.message", "text": "Third!"})
    assert (await recv(layer, channel))["text"] == "Second!"
    assert (await recv(layer, channel))["text"] == "Third!"
    await assert_nothing(layer, channel)


@impls("a message expiring unread removes its channel from every group")
@pytest.mark.asyncio
async def test_message_expiry_group_send(cls):
    # The margin of the test above.
    layer = cls(expiry=2.0)
    channel = await layer.new_channel()
    await layer.group_add("test-group", channel)
    await layer.group_send("test-group", {"type": "test.message", "text": "First!"})
    await asyncio.sleep(1.2)
    await layer.group_send("test-group", {"type": "test.message", "text": "Second!"})
    await asyncio.sleep(1.2)
    await layer.group_send("test-group", {"type": "test.message", "text": "Third!"})
    assert (await recv(layer, channel))["text"] == "Second!"
    assert (await recv(layer, channel))["text"] == "Third!"
    await assert_nothing(layer, channel)


@impls()
@pytest.mark.asyncio
async def test_group_membership_expires(cls):
    layer = cls(group_expiry=1)
    await layer.group_add("g", "c1")
    await layer.group_send("g", {"type": "in-time"})
    assert (await recv(layer, "c1"))["type"] == "in-time"
    await asyncio.sleep(2.1)
    await layer.group_send("g", {"type": "too-late"})
    await assert_nothing(layer, "c1")


@pytest.mark.asyncio
async def test_group_add_renews_membership():
    layer = CdaphneLayer(group_expiry=1.0)
    await layer.group_add("g", "c1")
    await asyncio.sleep(0.6)
    await layer.group_add("g", "c1")
    await asyncio.sleep(0.6)  # 1.2 s after the first add, 0.6 s after the second
    await layer.group_send("g", {"type": "renewed"})
    assert (await recv(layer, "c1"))["type"] == "renewed"
    await asyncio.sleep(1.0)
    await layer.group_send("g", {"type": "expired"})
    await assert_nothing(layer, "c1")


@impls("expired messages are only cleaned inside receive()/group_send() (channels #933)")
@pytest.mark.asyncio
async def test_expired_messages_are_reclaimed_by_a_timer(cls):
    layer = cls(expiry=0.1)
    for i in range(100):
        await layer.send(f"orphan-{i}", {"type": "x"})
    assert len(layer.channels) == 100
    # No layer call from here on: only the layer's own timer can reclaim.
    await asyncio.sleep(0.5)
    assert len(layer.channels) == 0


@pytest.mark.asyncio
async def test_timer_reclaims_channels_memberships_and_stops():
    layer = CdaphneLayer(expiry=0.1, group_expiry=0.2)
    for i in range(50):
        await layer.send(f"orphan-{i}", {"type": "x"})
        await layer.group_add("g", f"member-{i}")
    stats = layer.stats()
    assert stats["channels"] == 100 and stats["memberships"] == 50 and stats["timer"]
    await asyncio.sleep(0.6)
    stats = layer.stats()
    assert stats["channels"] == 0 and stats["groups"] == 0 and stats["memberships"] == 0
    assert not stats["timer"]


@impls("orphaned channels and their messages are never freed (channels #933)")
@pytest.mark.asyncio
async def test_abandoned_channels_give_memory_back(cls):
    layer = cls(expiry=2, group_expiry=1)
    payload = "p" * 100
    await layer.send("warm-up", {"type": "x"})
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for i in range(100_000):
            name = await layer.new_channel()
            await layer.send(name, {"type": "chat.message", "text": payload, "i": i})
            if i % 10 == 0:
                await layer.group_add("room", name)
        _, grown = tracemalloc.get_traced_memory()
        assert grown - base > 10_000_000  # the test measures something real
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            gc.collect()
            after, _ = tracemalloc.get_traced_memory()
            if after - base < (grown - base) / 20:
                break
        assert after - base < (grown - base) / 20, (base, grown, after)
    finally:
        tracemalloc.stop()


# ---- concurrency ------------------------------------------------------------


@impls("a second concurrent receive() on one channel is never woken (lost wake-up)")
@pytest.mark.asyncio
async def test_concurrent_receivers_on_one_channel_are_all_served(cls):
    layer = cls()
    tasks = [asyncio.create_task(layer.receive("shared")) for _ in range(3)]
    await asyncio.sleep(0.01)
    for i in range(3):
        # Let each message be taken before the next one is sent.
        await layer.send("shared", {"type": "m", "i": i})
        await asyncio.sleep(0.01)
    done, pending = await asyncio.wait(tasks, timeout=1)
    for task in pending:
        task.cancel()
    assert not pending
    assert sorted(t.result()["i"] for t in tasks) == [0, 1, 2]


@pytest.mark.asyncio
async def test_concurrent_receivers_are_served_in_arrival_order():
    layer = CdaphneLayer()
    tasks = []
    for _ in range(5):
        tasks.append(asyncio.create_task(layer.receive("shared")))
        await asyncio.sleep(0)
    for i in range(5):
        await layer.send("shared", {"type": "m", "i": i})
    results = await asyncio.wait_for(asyncio.gather(*tasks), 1)
    assert [r["i"] for r in results] == [0, 1, 2, 3, 4]


@impls()
@pytest.mark.asyncio
async def test_cancelled_receive_leaves_nothing_behind(cls):
    layer = cls(capacity=100)
    for _ in range(20):
        task = asyncio.create_task(layer.receive("c"))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    if cls is CdaphneLayer:
        assert layer.stats()["waiters"] == 0
    await layer.send("c", {"type": "only"})
    assert (await recv(layer, "c"))["type"] == "only"


@impls()
@pytest.mark.asyncio
async def test_message_handed_to_a_cancelled_receive_is_not_lost(cls):
    layer = cls()
    task = asyncio.create_task(layer.receive("c"))
    await asyncio.sleep(0.01)
    # The send reaches the waiting receive before its task runs again; the
    # cancellation then wins.  The message must go back to the channel.
    await layer.send("c", {"type": "m", "i": 1})
    task.cancel()
    await layer.send("c", {"type": "m", "i": 2})
    try:
        first = [(await task)["i"]]
    except asyncio.CancelledError:
        first = []
    rest = []
    while len(first) + len(rest) < 2:
        rest.append((await recv(layer, "c", 1))["i"])
    assert first + rest == [1, 2]


@pytest.mark.asyncio
async def test_sweep_between_hand_over_and_cancel_keeps_the_message():
    # The channel looks idle (no queue, no waiter) while a cancelled waiter
    # still holds its message: a sweep in between must not forget it.
    layer = CdaphneLayer()
    task = asyncio.create_task(layer.receive("c"))
    await asyncio.sleep(0.01)
    await layer.send("c", {"type": "handed"})
    layer.sweep()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await recv(layer, "c", 1))["type"] == "handed"


@impls()
@pytest.mark.asyncio
async def test_receive_cancel_race_loses_no_message(cls):
    # channels_redis' test_receive_cancel, counting every message.
    layer = cls(capacity=1000)
    sent = received = 0
    delay = 0.0
    while delay < 0.01:
        await layer.send("c", {"type": "m", "n": sent})
        sent += 1
        task = asyncio.ensure_future(layer.receive("c"))
        await asyncio.sleep(delay)
        task.cancel()
        delay += 0.0005
        try:
            await task
            received += 1
        except asyncio.CancelledError:
            pass
    while True:
        try:
            await asyncio.wait_for(layer.receive("c"), 0.1)
            received += 1
        except TimeoutError:
            break
    assert received == sent


@impls()
@pytest.mark.asyncio
async def test_receive_under_asyncio_timeout(cls):
    layer = cls()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await layer.receive("c")
    await layer.send("c", {"type": "after-timeout"})
    assert (await recv(layer, "c"))["type"] == "after-timeout"


@impls()
@pytest.mark.asyncio
async def test_many_concurrent_senders_lose_nothing_below_capacity(cls):
    layer = cls(capacity=2000)
    senders, per_sender = 40, 25

    async def sender(s):
        for i in range(per_sender):
            await layer.send("busy", {"type": "m", "id": (s, i)})
            if i % 5 == 0:
                await asyncio.sleep(0)

    await asyncio.gather(*(sender(s) for s in range(senders)))
    got = [(await recv(layer, "busy"))["id"] for _ in range(senders * per_sender)]
    assert sorted(got) == sorted((s, i) for s in range(senders) for i in range(per_sender))
    await assert_nothing(layer, "busy", 0.05)


@impls()
@pytest.mark.asyncio
async def test_senders_and_receivers_interleaved_lose_nothing(cls):
    layer = cls(capacity=100)
    total = 2000
    got: list = []

    async def receiver():
        while len(got) < total:
            try:
                got.append((await asyncio.wait_for(layer.receive("pipe"), 1))["n"])
            except TimeoutError:
                return

    async def sender(start):
        for n in range(start, total, 4):
            while True:
                try:
                    await layer.send("pipe", {"type": "m", "n": n})
                    break
                except ChannelFull:
                    await asyncio.sleep(0.001)

    receivers = [asyncio.create_task(receiver()) for _ in range(3)]
    await asyncio.gather(*(sender(s) for s in range(4)))
    await asyncio.wait_for(asyncio.gather(*receivers), 5)
    assert sorted(got) == list(range(total))


@pytest.mark.asyncio
async def test_receive_completes_without_a_loop_round_trip():
    layer = CdaphneLayer()
    await layer.send("c", {"type": "ready"})
    awaitable = layer.receive("c")
    with pytest.raises(StopIteration) as info:
        awaitable.send(None)
    assert info.value.value == {"type": "ready"}
    # And the waiting case yields exactly one loop future.
    waiting = layer.receive("c")
    fut = waiting.send(None)
    assert isinstance(fut, asyncio.Future) and fut._asyncio_future_blocking
    waiting.close()
    assert layer.stats()["waiters"] == 0


def test_receive_asks_a_loop_with_its_own_create_future():
    # The waiting future is asyncio.Future(loop=loop) made directly only for
    # loops that keep BaseEventLoop.create_future; others are asked.
    made: list[asyncio.Future] = []

    class MyFuture(asyncio.Future):
        pass

    class Loop(asyncio.SelectorEventLoop):
        def create_future(self):  # type: ignore[no-untyped-def]
            fut = MyFuture(loop=self)
            made.append(fut)
            return fut

    async def main() -> dict:
        layer = CdaphneLayer()
        waiting = asyncio.ensure_future(layer.receive("c"))
        await asyncio.sleep(0)
        assert len(made) == 1 and isinstance(made[0], MyFuture)
        await layer.send("c", {"type": "late"})
        return await asyncio.wait_for(waiting, 5)

    loop = Loop()
    try:
        assert loop.run_until_complete(main()) == {"type": "late"}
    finally:
        loop.close()


def _stock_loop() -> asyncio.AbstractEventLoop:
    return asyncio.SelectorEventLoop()


def _cdaphne_loop() -> asyncio.AbstractEventLoop:
    from cdaphne.loop import new_event_loop

    return new_event_loop()


@pytest.mark.parametrize("new_loop", [_stock_loop, _cdaphne_loop], ids=["asyncio", "cdaphne"])
def test_receive_follows_a_create_future_set_on_the_loop_instance(new_loop):
    # asyncio's own code (asyncio.wait, sleep, ...) calls loop.create_future(),
    # which finds an attribute set on the instance before the class's method:
    # the layer's waiting receive must make its future the same way.
    calls: list[asyncio.Future] = []

    class MyFuture(asyncio.Future):
        pass

    loop = new_loop()

    def create_future() -> asyncio.Future:
        fut = MyFuture(loop=loop)
        calls.append(fut)
        return fut

    loop.create_future = create_future  # type: ignore[method-assign]

    async def main() -> dict:
        layer = CdaphneLayer()
        # asyncio itself honours the instance attribute.
        done, _ = await asyncio.wait([asyncio.ensure_future(asyncio.sleep(0))])
        assert len(calls) == 1
        waiting = asyncio.ensure_future(layer.receive("c"))
        await asyncio.sleep(0)
        assert len(calls) == 2 and isinstance(calls[1], MyFuture)
        await layer.send("c", {"type": "late"})
        async with asyncio.timeout(5):  # wait_for would make a future itself on 3.11
            got = await waiting
        # A message already queued needs no future at all.
        await layer.send("c", {"type": "ready"})
        assert await layer.receive("c") == {"type": "ready"}
        assert len(calls) == 2
        return got

    try:
        assert loop.run_until_complete(main()) == {"type": "late"}
        del loop.create_future
        # Without the attribute the class's method is used again.
        calls.clear()
        assert loop.run_until_complete(_receive_late()) == {"type": "late"}
        assert calls == []
    finally:
        loop.close()


async def _receive_late() -> dict:
    layer = CdaphneLayer()
    waiting = asyncio.ensure_future(layer.receive("c"))
    await asyncio.sleep(0)
    await layer.send("c", {"type": "late"})
    return await asyncio.wait_for(waiting, 5)


@pytest.mark.asyncio
async def test_receive_is_a_coroutine_function_for_async_to_sync():
    import inspect

    layer = CdaphneLayer()
    for name in ("send", "receive", "group_send", "group_add", "new_channel", "flush"):
        assert inspect.iscoroutinefunction(getattr(layer, name)) or asyncio.iscoroutinefunction(
            getattr(layer, name)
        ), name
    coro = layer.receive("c")
    assert asyncio.iscoroutine(coro)
    coro.close()


# ---- threads and other loops -------------------------------------------------


def _run_in_thread(fn):
    errors: list = []

    def target():
        try:
            fn()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, errors


@impls("a send from another thread's loop does not wake the receiver's loop")
@pytest.mark.asyncio
async def test_send_from_another_thread_and_loop_wakes_receiver(cls):
    layer = cls()
    task = asyncio.create_task(layer.receive("x"))
    await asyncio.sleep(0.01)
    start = time.monotonic()

    async def send_later():
        await asyncio.sleep(0.1)  # the receiver's loop is asleep by now
        await layer.send("x", {"type": "from-thread"})

    thread, errors = _run_in_thread(lambda: asyncio.run(send_later()))
    message = await asyncio.wait_for(task, 3)
    elapsed = time.monotonic() - start
    thread.join()
    assert not errors
    assert message["type"] == "from-thread"
    assert elapsed < 1.0


@impls("a group_send from another thread's loop does not wake the receiver's loop")
@pytest.mark.asyncio
async def test_group_send_via_async_to_sync_in_plain_thread_wakes_receiver(cls):
    layer = cls()
    await layer.group_add("room", "member")
    task = asyncio.create_task(layer.receive("member"))
    await asyncio.sleep(0.01)
    start = time.monotonic()

    def send_later():
        time.sleep(0.1)  # the receiver's loop is asleep by now
        async_to_sync(layer.group_send)("room", {"type": "from-sync-code"})

    thread, errors = _run_in_thread(send_later)
    message = await asyncio.wait_for(task, 3)
    elapsed = time.monotonic() - start
    thread.join()
    assert not errors
    assert message["type"] == "from-sync-code"
    assert elapsed < 1.0


@impls()
def test_receive_on_a_loop_in_another_thread(cls):
    # channels_redis' test_double_receive: each receive on its own loop.
    layer = cls(capacity=3)
    name_1 = async_to_sync(layer.new_channel)()
    name_2 = async_to_sync(layer.new_channel)()
    async_to_sync(layer.send)(name_1, {"type": "test.message.1"})
    async_to_sync(layer.send)(name_2, {"type": "test.message.2"})
    assert async_to_sync(layer.receive)(name_2)["type"] == "test.message.2"
    assert async_to_sync(layer.receive)(name_1)["type"] == "test.message.1"
    async_to_sync(layer.flush)()


@impls("sends from other threads' loops do not wake the receiver's loop")
def test_many_threads_send_to_receivers_on_other_loops(cls):
    layer = cls(capacity=10_000)
    threads_n, per_thread = 4, 50
    received: dict = {}
    elapsed: dict = {}

    def receiver(channel):
        async def drain():
            out = []
            for _ in range(threads_n * per_thread):
                out.append((await layer.receive(channel))["id"])
            received[channel] = out

        async def main():
            # One deadline for everything: the receiver's loop has no other
            # timer that would wake it, so only the layer's wake-ups count.
            start = time.monotonic()
            await asyncio.wait_for(drain(), 5)
            elapsed[channel] = time.monotonic() - start

        asyncio.run(main())

    def sender(t):
        async def main():
            for i in range(per_thread):
                await layer.send("r1", {"type": "m", "id": (t, i)})
                await layer.group_send("both", {"type": "m", "id": (t, i)})
                await asyncio.sleep(0.002)

        asyncio.run(main())

    async_to_sync(layer.group_add)("both", "r2")
    rthreads = [_run_in_thread(lambda c=c: receiver(c)) for c in ("r1", "r2")]
    time.sleep(0.05)
    sthreads = [_run_in_thread(lambda t=t: sender(t)) for t in range(threads_n)]
    for thread, errors in sthreads + rthreads:
        thread.join(30)
        assert not errors, errors
    expected = sorted((t, i) for t in range(threads_n) for i in range(per_thread))
    assert sorted(received["r1"]) == expected
    assert sorted(received["r2"]) == expected
    # FIFO per sender is kept.
    for t in range(threads_n):
        assert [i for (tt, i) in received["r1"] if tt == t] == list(range(per_thread))
    # About 50 sends 2 ms apart: well under 2 s unless wake-ups are lost.
    assert max(elapsed.values()) < 2.0, elapsed


def test_send_to_a_waiter_whose_loop_is_closed_keeps_the_message():
    layer = CdaphneLayer()
    loop = asyncio.new_event_loop()
    waiting = layer.receive("c")

    async def start_waiting():
        return waiting.send(None)  # registers the waiter on this loop

    loop.run_until_complete(start_waiting())
    loop.close()
    assert layer.stats()["waiters"] == 1

    async def main():
        await layer.send("c", {"type": "kept"})
        return await recv(layer, "c")

    assert asyncio.run(main())["type"] == "kept"
    assert layer.stats()["waiters"] == 0


# ---- Django/Channels integration ---------------------------------------------


def test_get_channel_layer_with_cdaphne_backend():
    from django.conf import settings

    if not settings.configured:
        settings.configure()
    from channels.layers import get_channel_layer
    from django.test import override_settings

    config = {
        "default": {
            "BACKEND": "cdaphne.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": 2, "expiry": 5, "channel_capacity": {"one": 1}},
        }
    }
    with override_settings(CHANNEL_LAYERS=config):
        layer = get_channel_layer()
        assert isinstance(layer, CdaphneLayer)
        assert layer.capacity == 2 and layer.expiry == 5

        async def use():
            await layer.send("one", {"type": "x"})
            with pytest.raises(ChannelFull):
                await layer.send("one", {"type": "x"})
            await layer.send("two", {"type": "x"})
            await layer.send("two", {"type": "x"})
            with pytest.raises(ChannelFull):
                await layer.send("two", {"type": "x"})
            return await layer.receive("one")

        assert async_to_sync(use)() == {"type": "x"}
