"""Reports the event loop's settings the command line controls (ASGI_THREADS, -v 3)."""

from __future__ import annotations

import asyncio
import threading

from .common import read_body, send_json


async def app(scope, receive, send):
    if scope["type"] != "http":
        raise RuntimeError("http only")
    await read_body(receive)
    loop = asyncio.get_running_loop()
    # Start the default executor (created on first use), then read its size.
    await loop.run_in_executor(None, threading.get_ident)
    executor = loop._default_executor  # Daphne's own test reads the same.
    await send_json(send, {"debug": loop.get_debug(),
                           "max_workers": executor._max_workers})
