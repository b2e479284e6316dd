"""cdaphne.loop: asyncio on the libuv selector, in process."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from cdaphne.loop import new_event_loop


@pytest.fixture
def loop():
    loop = new_event_loop()
    yield loop
    loop.close()


def test_timer_after_blocking_work_fires(loop):
    # Regression: libuv's cached clock made the select timeout fire before
    # the poll, which then blocked with no timeout at all.
    async def main() -> int:
        done = 0
        for _ in range(20):
            time.sleep(0.015)  # Python busy longer than the next timeout.
            await asyncio.sleep(0.01)
            done += 1
        return done

    assert loop.run_until_complete(asyncio.wait_for(main(), 5)) == 20


def test_sleep_takes_about_as_long_as_asked(loop):
    start = time.monotonic()
    loop.run_until_complete(asyncio.sleep(0.2))
    assert 0.19 <= time.monotonic() - start < 2


def test_call_soon_threadsafe_wakes_a_blocked_loop(loop):
    fut = loop.create_future()
    threading.Timer(0.1, loop.call_soon_threadsafe, (fut.set_result, "woken")).start()
    assert loop.run_until_complete(asyncio.wait_for(fut, 5)) == "woken"


def test_readers_writers_and_unregister(loop):
    r, w = os.pipe()
    got = loop.create_future()

    def on_read() -> None:
        loop.remove_reader(r)
        got.set_result(os.read(r, 100))

    loop.add_reader(r, on_read)
    loop.call_later(0.05, os.write, w, b"ping")
    assert loop.run_until_complete(asyncio.wait_for(got, 5)) == b"ping"
    writable = loop.create_future()
    loop.add_writer(w, lambda: (loop.remove_writer(w), writable.set_result(True)))
    assert loop.run_until_complete(asyncio.wait_for(writable, 5)) is True
    os.close(r)
    os.close(w)


def test_streams_and_executor(loop):
    async def main() -> bytes:
        async def handle(reader, writer):
            writer.write((await reader.readline()).upper())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello\n")
        line = await reader.readline()
        writer.close()
        server.close()
        await server.wait_closed()
        assert await loop.run_in_executor(None, sum, [1, 2, 3]) == 6
        return line

    assert loop.run_until_complete(asyncio.wait_for(main(), 5)) == b"HELLO\n"
