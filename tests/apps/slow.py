"""An app whose requests take a while (graceful shutdown)."""

from __future__ import annotations

import asyncio
import os
import time

from .common import query


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                path = os.environ.get("CDAPHNE_TEST_MARKER")
                if path:
                    with open(path, "a") as f:
                        f.write("shutdown\n")
                await send({"type": "lifespan.shutdown.complete"})
                return
    thread = float(query(scope).get("thread", "0"))
    if thread:
        # An executor job the response does not wait for (a blocked sync
        # call the app left running).
        asyncio.get_running_loop().run_in_executor(None, time.sleep, thread)
    delay = float(query(scope).get("s", "0"))
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"started;", "more_body": True})
    await asyncio.sleep(delay)
    await send({"type": "http.response.body", "body": b"finished"})
