"""Small ASGI apps the test suite serves with a real cdaphne process."""

from __future__ import annotations

import asyncio
import json


async def hello(scope, receive, send):
    if scope["type"] != "http":
        raise RuntimeError("http only")
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"Hello, world!"})
