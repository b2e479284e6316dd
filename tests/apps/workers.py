"""An app for tests/test_workers.py: every response names the worker's pid.

/            the pid
/slow?s=N    the pid after N seconds (asyncio.sleep)
/block?s=N   blocks the event loop for N seconds (time.sleep), then the pid
Lifespan startup and shutdown are logged with the pid (one per worker).
The x-app-version header is the content of $WORKERS_APP_VERSION_FILE when
the module was imported (a rolling restart picks up a new one).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from urllib.parse import parse_qs

logger = logging.getLogger("cdaphne")


def _version() -> bytes:
    path = os.environ.get("WORKERS_APP_VERSION_FILE")
    if not path:
        return b"-"
    with open(path, "rb") as f:
        return f.read().strip()


VERSION = _version()


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                logger.info("app startup in %d", os.getpid())
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                logger.info("app shutdown in %d", os.getpid())
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    seconds = float(parse_qs(scope["query_string"].decode()).get("s", ["0"])[0])
    if scope["path"] == "/slow":
        await asyncio.sleep(seconds)
    elif scope["path"] == "/block":
        time.sleep(seconds)
    body = str(os.getpid()).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"x-app-version", VERSION),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
