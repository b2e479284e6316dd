"""channels_redis against a real redis-server started by a fixture.

Checks that ``RedisChannelLayer`` and ``RedisPubSubChannelLayer`` work in our
environment (versions of redis-py, asgiref and Python): send/receive,
process-local channels, groups, capacity, expiry, other loops, two layer
instances and a second OS process sharing one Redis.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest
from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer

pytestmark = pytest.mark.redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="module")
def redis_url():
    if not os.path.exists(REDIS_SERVER):
        pytest.fail("redis-server is not installed (scripts/bootstrap.sh installs it)")
    workdir = tempfile.mkdtemp(prefix="cdaphne-redis-")
    for _attempt in range(5):
        port = _free_port()
        proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--bind", "127.0.0.1",
                "--port", str(port),
                "--save", "",
                "--appendonly", "no",
                "--dir", workdir,
                "--databases", "16",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            if _ping(port):
                break
            time.sleep(0.05)
        if proc.poll() is None and _ping(port):
            break
        proc.kill()
        proc.wait()
    else:
        pytest.fail("could not start redis-server")
    try:
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


async def recv(layer, channel, timeout=3.0):
    return await asyncio.wait_for(layer.receive(channel), timeout)


async def assert_nothing(layer, channel, timeout=0.3):
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive(channel), timeout)


def core_layer(url, **config):
    return RedisChannelLayer(hosts=[url], **config)


async def finish(layer):
    await layer.flush()
    if isinstance(layer, RedisChannelLayer):
        await layer.close_pools()


# ---- RedisChannelLayer --------------------------------------------------------


@pytest.mark.asyncio
async def test_core_send_receive_keeps_order(redis_url):
    layer = core_layer(redis_url)
    try:
        for i in (1, 2, 3):
            await layer.send("test-channel-1", {"type": f"message.{i}", "body": [i]})
        for i in (1, 2, 3):
            assert await recv(layer, "test-channel-1") == {"type": f"message.{i}", "body": [i]}
    finally:
        await finish(layer)


@pytest.mark.asyncio
async def test_core_process_local_channels(redis_url):
    layer = core_layer(redis_url)
    try:
        first, second = await layer.new_channel(), await layer.new_channel()
        assert first != second and "!" in first
        await layer.send(second, {"type": "to.second"})
        await layer.send(first, {"type": "to.first"})
        assert (await recv(layer, first))["type"] == "to.first"
        assert (await recv(layer, second))["type"] == "to.second"
    finally:
        await finish(layer)


@pytest.mark.asyncio
async def test_core_capacity_and_channel_capacity(redis_url):
    layer = core_layer(redis_url, capacity=3, channel_capacity={"tiny": 1})
    try:
        for _ in range(3):
            await layer.send("test-channel-1", {"type": "m"})
        with pytest.raises(ChannelFull):
            await layer.send("test-channel-1", {"type": "m"})
        await layer.send("tiny", {"type": "m"})
        with pytest.raises(ChannelFull):
            await layer.send("tiny", {"type": "m"})
    finally:
        await finish(layer)


@pytest.mark.asyncio
async def test_core_rejects_bad_names(redis_url):
    layer = core_layer(redis_url)
    try:
        with pytest.raises(TypeError):
            await layer.send("=+135!", {"type": "foom"})
        with pytest.raises(TypeError):
            await layer.receive("=+135!")
    finally:
        await finish(layer)


@pytest.mark.asyncio
async def test_core_groups_round_trip(redis_url):
    layer = core_layer(redis_url, capacity=3)
    try:
        names = [await layer.new_channel(prefix=f"test-gr-chan-{i}") for i in range(3)]
        for name in names:
            await layer.group_add("test-group", name)
        await layer.group_discard("test-group", names[1])
        await layer.group_send("test-group", {"type": "message.1"})
        assert (await recv(layer, names[0]))["type"] == "message.1"
        assert (await recv(layer, names[2]))["type"] == "message.1"
        await assert_nothing(layer, names[1])
        # Full members miss messages silently.
        for i in range(2, 6):
            await layer.group_send("test-group", {"type": f"message.{i}"})
        for i in (2, 3, 4):
            assert (await recv(layer, names[0]))["type"] == f"message.{i}"
        await assert_nothing(layer, names[0])
    finally:
        await finish(layer)


@pytest.mark.asyncio
async def test_core_message_expiry(redis_url):
    layer = core_layer(redis_url, expiry=1)
    try:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "m", "text": "First!"})
        await asyncio.sleep(2.1)
        await layer.send(channel, {"type": "m", "text": "Second!"})
        assert (await recv(layer, channel))["text"] == "Second!"
        await assert_nothing(layer, channel)
    finally:
        await finish(layer)


@pytest.mark.asyncio
async def test_core_two_layer_instances_share_redis(redis_url):
    # Two layers with separate pools, as two server processes would have.
    a, b = core_layer(redis_url), core_layer(redis_url)
    try:
        a_chan = await a.new_channel()
        await a.group_add("room", a_chan)
        await b.group_send("room", {"type": "chat.message", "text": "from b"})
        assert (await recv(a, a_chan))["text"] == "from b"
        await b.send(a_chan, {"type": "direct"})
        assert (await recv(a, a_chan))["type"] == "direct"
    finally:
        await finish(a)
        await b.close_pools()


def test_core_send_from_plain_thread_wakes_receiver(redis_url):
    layer = core_layer(redis_url)

    async def main():
        channel = await layer.new_channel()
        task = asyncio.create_task(layer.receive(channel))
        await asyncio.sleep(0.1)

        def other_thread():
            # As Django sync code does: the thread's own loop gets its own
            # pool, which channels_redis closes with that loop.
            async_to_sync(layer.send)(channel, {"type": "from.thread"})

        thread = threading.Thread(target=other_thread)
        thread.start()
        message = await asyncio.wait_for(task, 5)
        thread.join()
        await finish(layer)
        return message

    assert asyncio.run(main())["type"] == "from.thread"


def test_core_group_send_from_another_process(redis_url):
    layer = core_layer(redis_url)
    child = textwrap.dedent(
        f"""
        import asyncio
        from channels_redis.core import RedisChannelLayer

        async def main():
            layer = RedisChannelLayer(hosts=[{redis_url!r}])
            await layer.group_send("room", {{"type": "chat.message", "text": "hi"}})
            await layer.close_pools()

        asyncio.run(main())
        """
    )

    async def main():
        channel = await layer.new_channel()
        await layer.group_add("room", channel)
        task = asyncio.create_task(layer.receive(channel))
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", child)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        message = await asyncio.wait_for(task, 30)  # generous: a loaded, sanitized run
        await finish(layer)
        return message

    assert asyncio.run(main()) == {"type": "chat.message", "text": "hi"}


# ---- RedisPubSubChannelLayer ----------------------------------------------------


@pytest.mark.asyncio
async def test_pubsub_send_receive_keeps_order(redis_url):
    layer = RedisPubSubChannelLayer(hosts=[redis_url])
    try:
        channel = await layer.new_channel()
        for i in (1, 2, 3):
            await layer.send(channel, {"type": f"message.{i}"})
        for i in (1, 2, 3):
            assert (await recv(layer, channel))["type"] == f"message.{i}"
    finally:
        await layer.flush()


@pytest.mark.asyncio
async def test_pubsub_groups_round_trip(redis_url):
    layer = RedisPubSubChannelLayer(hosts=[redis_url])
    try:
        names = [await layer.new_channel(prefix=f"test-gr-chan-{i}") for i in range(3)]
        for name in names:
            await layer.group_add("test-group", name)
        await layer.group_discard("test-group", names[1])
        await layer.group_send("test-group", {"type": "message.1"})
        assert (await recv(layer, names[0]))["type"] == "message.1"
        assert (await recv(layer, names[2]))["type"] == "message.1"
        await assert_nothing(layer, names[1])
    finally:
        await layer.flush()


@pytest.mark.asyncio
async def test_pubsub_two_layer_instances_share_redis(redis_url):
    a = RedisPubSubChannelLayer(hosts=[redis_url])
    b = RedisPubSubChannelLayer(hosts=[redis_url])
    try:
        channel = await a.new_channel()
        await a.group_add("room", channel)
        await b.group_send("room", {"type": "chat.message", "text": "from b"})
        assert (await recv(a, channel))["text"] == "from b"
        await b.send(channel, {"type": "direct"})
        assert (await recv(a, channel))["type"] == "direct"
    finally:
        await a.flush()
        await b.flush()
