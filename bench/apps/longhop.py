"""Hello world while a thread hop is always out: from the first request on, a
background task keeps one `run_in_executor(None, time.sleep, 1)` in flight (a
slow sync view's or a long job's hop). bench/shared_core.py's `--app long-hop`."""

import asyncio
import time
from typing import Any

from hello import RESPONSE, START

_jobs: list[asyncio.Task[None]] = []


async def _long_hops() -> None:
    loop = asyncio.get_running_loop()
    while True:
        await loop.run_in_executor(None, time.sleep, 1.0)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if not _jobs:
        _jobs.append(asyncio.ensure_future(_long_hops()))
    await send(START)
    await send(RESPONSE)
