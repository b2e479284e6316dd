"""cdaphne.pubsub's inbox: publishes from other threads, in this process.

The loop is a LibuvEventLoop with no server: publishes from other threads
queue in its inbox and the loop fans them out (to no subscriber) and hands
each to the forward hook, on the loop thread.  Only the loop's wake-up can
end its poll here: nothing else is scheduled.
"""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from cdaphne import _cdaphne
from cdaphne.config import Config
from cdaphne.loop import new_event_loop


@pytest.fixture
def loop():
    loop = new_event_loop()
    try:
        yield loop
    finally:
        _cdaphne.pubsub_set_hooks(None, None)
        loop.close()


def publish_until_queued(topic: str, data: str) -> None:
    """pubsub.publish()'s backpressure: retry while the inbox is full."""
    while not _cdaphne.pubsub_publish(topic, data, True):
        threading.Event().wait(0.0005)


def test_many_threads_publish_while_the_loop_receives_and_nothing_is_lost(loop):
    threads, per_thread = 8, 2000
    total = threads * per_thread
    got: dict[str, list[int]] = {}
    done = loop.create_future()

    def forward(topic: str, data: str, is_text: bool) -> None:
        assert threading.current_thread() is threading.main_thread()
        got.setdefault(topic, []).append(int(data))
        if sum(map(len, got.values())) == total and not done.done():
            done.set_result(None)

    _cdaphne.pubsub_set_hooks(forward, None)

    def publisher(k: int) -> None:
        start.wait()
        for i in range(per_thread):
            publish_until_queued(f"t{k}", str(i))

    async def echo(reader, writer) -> None:
        # The loop also receives: a socket keeps it busy the whole time.
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def chatter(sock: socket.socket) -> int:
        reader, writer = await asyncio.open_connection(sock=sock)
        rounds = 0
        while not done.done():
            writer.write(b"x" * 512)
            await reader.readexactly(512)
            rounds += 1
            if rounds == 20:
                start.set()  # The publishers go once the loop is busy.
        writer.close()
        return rounds

    async def main() -> int:
        a, b = socket.socketpair()
        r, w = await asyncio.open_connection(sock=a)
        echo_task = asyncio.ensure_future(echo(r, w))
        chat = asyncio.ensure_future(chatter(b))
        await asyncio.wait_for(asyncio.shield(done), 60)
        rounds = await chat
        await echo_task
        return rounds

    start = threading.Event()
    workers = [threading.Thread(target=publisher, args=(k,)) for k in range(threads)]
    for t in workers:
        t.start()
    try:
        rounds = loop.run_until_complete(main())
    finally:
        start.set()
        for t in workers:
            t.join(60)
    assert rounds >= 20
    # Every message, each thread's in its order.
    assert got == {f"t{k}": list(range(per_thread)) for k in range(threads)}
    assert _cdaphne.pubsub_stats()["published"] >= total


def test_a_publish_from_a_thread_wakes_a_loop_that_waits_for_nothing_else(loop):
    got = []
    done = loop.create_future()

    def forward(topic: str, data: str, is_text: bool) -> None:
        got.append(data)
        if len(got) == 3:
            done.set_result(None)

    _cdaphne.pubsub_set_hooks(forward, None)

    def later() -> None:
        for text in ("a", "b", "c"):
            threading.Event().wait(0.05)
            publish_until_queued("solo", text)

    t = threading.Thread(target=later)
    t.start()
    try:
        # No timer and no fd but the wake-up: a missed wake-up hangs here
        # until the generous bound.
        loop.run_until_complete(asyncio.wait_for(done, 30))
    finally:
        t.join(30)
    assert got == ["a", "b", "c"]


def _fill_from_a_thread(data: str, tries: int) -> int:
    """Publishes data from another thread until the inbox says full (or
    tries run out); the number accepted."""
    accepted = []

    def fill() -> None:
        n = 0
        while n < tries and _cdaphne.pubsub_publish("fill", data, True):
            n += 1
        accepted.append(n)

    t = threading.Thread(target=fill)
    t.start()
    t.join(120)
    return accepted[0]


def test_the_inbox_is_bounded_by_default_before_any_server_exists(loop):
    # Nobody runs the loop: the inbox only fills.  Config's default bound
    # holds from the loop's creation, not only once a server applies it.
    limit = Config.pubsub_max_inbox
    assert 0 < limit <= 1 << 20
    assert _fill_from_a_thread("m", limit + 1000) == limit


def test_the_inbox_byte_bound_holds_by_default_too(loop):
    limit = Config.pubsub_max_inbox_bytes
    size = 1 << 20
    assert 0 < limit // size <= 1024
    accepted = _fill_from_a_thread("x" * size, limit // size + 10)
    # A frame is the payload plus its header (10 bytes at this size).
    assert accepted == limit // (size + 10)


def test_the_queued_messages_go_out_once_the_loop_runs(loop):
    got = []
    _cdaphne.pubsub_set_hooks(lambda topic, data, is_text: got.append(data), None)
    assert _fill_from_a_thread("m", 100) == 100
    assert got == []
    loop.run_until_complete(asyncio.sleep(0))
    loop.run_until_complete(asyncio.sleep(0))
    assert got == ["m"] * 100
