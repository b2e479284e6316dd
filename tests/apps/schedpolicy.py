"""Reports the scheduling policy of the threads an app runs on: the
loop's, the default executor's, asgiref's thread-sensitive one's and a
thread the app starts itself (--sched-batch)."""

from __future__ import annotations

import asyncio
import os
import threading

from asgiref.sync import sync_to_async

from .common import read_body, send_json


def policy() -> int:
    return os.sched_getscheduler(0)


def started_thread() -> int:
    out: list[int] = []
    t = threading.Thread(target=lambda: out.append(policy()))
    t.start()
    t.join()
    return out[0]


async def app(scope, receive, send):
    if scope["type"] != "http":
        raise RuntimeError("http only")
    await read_body(receive)
    loop = asyncio.get_running_loop()
    await send_json(send, {
        "loop": policy(),
        "executor": await loop.run_in_executor(None, policy),
        "sync_to_async": await sync_to_async(policy, thread_sensitive=True)(),
        "thread": await asyncio.to_thread(started_thread),
    })
