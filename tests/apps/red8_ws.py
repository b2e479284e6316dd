"""WebSocket app for tests/test_red8_deflate.py.

/flood   accepts, then sends 3200 binary messages of 64 KiB of random
         bytes (incompressible, 200 MiB) and closes; /sent (HTTP) says how
         many bytes send() returned for.
anything else: echo.
"""

from __future__ import annotations

import json
import os

SENT = {"bytes": 0}


async def app(scope, receive, send):
    if scope["type"] == "http":
        body = json.dumps(SENT).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    if scope["path"] == "/flood":
        chunk = os.urandom(65536)
        for _ in range(3200):
            await send({"type": "websocket.send", "bytes": chunk})
            SENT["bytes"] += len(chunk)
        await send({"type": "websocket.close"})
        return
    while True:
        msg = await receive()
        if msg["type"] == "websocket.disconnect":
            return
        if msg.get("text") is not None:
            await send({"type": "websocket.send", "text": msg["text"]})
        else:
            await send({"type": "websocket.send", "bytes": msg["bytes"]})
