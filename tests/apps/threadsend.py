"""An app that calls send() and receive() from a worker thread (not the
event loop's), for tests/test_hostile_apps.py."""

from __future__ import annotations

import asyncio
import warnings

from asgiref.sync import async_to_sync, sync_to_async


def body(data: bytes) -> dict:
    return {"type": "http.response.body", "body": data, "more_body": True}


def drive(aw):
    """Runs an awaitable by hand in this thread (as a loop of its own would)."""
    it = aw.__await__()
    try:
        while True:
            it.send(None)
    except StopIteration as stop:
        return stop.value


def from_thread(loop, receive, send):
    out = []
    # Called, never awaited: nothing may go out (the call only makes the
    # awaitable; the loop does the work when it awaits it).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        send(body(b"never awaited;"))
    # Awaited in this thread: refused.
    for name, call in (("send", lambda: send(body(b"here;"))), ("receive", receive)):
        try:
            drive(call())
            out.append(f"{name}:ok")
        except RuntimeError as exc:
            out.append(f"{name}:{str(exc).split(';')[0]}")
    # Awaited on the server's loop: goes out.
    asyncio.run_coroutine_threadsafe(send(body(b"on the loop;")), loop).result()
    # Channels' sync consumers: async_to_sync from a sync_to_async thread.
    async_to_sync(send)(body(b"async_to_sync;"))
    return out


async def app(scope, receive, send):
    if scope["type"] != "http":
        raise RuntimeError("http only")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    loop = asyncio.get_running_loop()
    out = await sync_to_async(from_thread, thread_sensitive=False)(loop, receive, send)
    await send({"type": "http.response.body", "body": ("|".join(out)).encode()})
