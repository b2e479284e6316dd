"""Reports the scheduling policy of the threads an app runs on (--sched-batch):
the loop's while no thread hop is out and while one is, the default
executor's, asgiref's thread-sensitive one's, a thread the loop starts and
one a worker starts."""

from __future__ import annotations

import asyncio
import contextlib
import operator
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async

from .common import read_body, send_json


def policy(tid: int = 0) -> int:
    return os.sched_getscheduler(tid)


def started_thread() -> int:
    out: list[int] = []
    t = threading.Thread(target=lambda: out.append(policy()))
    t.start()
    t.join()
    return out[0]


async def odd_hops(loop: asyncio.AbstractEventLoop) -> None:
    """Hops that end otherwise: one raises, one is cancelled while it runs,
    one before it begins; then the loop sleeps past them all."""
    with contextlib.suppress(ZeroDivisionError):
        await loop.run_in_executor(None, operator.truediv, 1, 0)
    pool = ThreadPoolExecutor(max_workers=1)
    running = loop.run_in_executor(pool, time.sleep, 0.2)
    queued = loop.run_in_executor(pool, time.sleep, 0.2)
    await asyncio.sleep(0.05)
    running.cancel()
    queued.cancel()
    pool.shutdown(wait=False)
    await asyncio.sleep(0.4)


LONG_HOPS: set[asyncio.Future[None]] = set()


async def app(scope, receive, send):
    if scope["type"] != "http":
        raise RuntimeError("http only")
    await read_body(receive)
    loop = asyncio.get_running_loop()
    if scope["path"] == "/long":
        # A hop out for a second, not awaited: a slow view's, a long job's.
        hop = loop.run_in_executor(None, time.sleep, 1.0)
        LONG_HOPS.add(hop)
        hop.add_done_callback(LONG_HOPS.discard)
        await send_json(send, {"loop": policy()})
        return
    if scope["path"] == "/loop":
        await asyncio.sleep(0.01)  # the loop sleeps once first
        await send_json(send, {"loop": policy()})
        return
    if scope["path"] == "/odd":
        await odd_hops(loop)
        await send_json(send, {"loop": policy()})
        return
    loop_tid = threading.get_native_id()
    report = {"loop": policy(), "loop_started": started_thread()}
    report["loop_in_hop"] = await loop.run_in_executor(None, policy, loop_tid)
    report["executor"] = await loop.run_in_executor(None, policy)
    report["sync_to_async"] = await sync_to_async(policy, thread_sensitive=True)()
    report["worker_started"] = await asyncio.to_thread(started_thread)
    await send_json(send, report)
