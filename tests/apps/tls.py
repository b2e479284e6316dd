"""The TLS tests' app: tests.apps.http1 for HTTP, a WebSocket echo that
first reports its scheme and TLS extension."""

from __future__ import annotations

import json

from . import http1, ws


async def app(scope, receive, send):
    if scope["type"] == "http":
        await http1.app(scope, receive, send)
        return
    if scope["type"] != "websocket":
        return  # lifespan: nothing to do
    if scope["path"] != "/scope":
        await ws.echo(scope, receive, send)
        return
    message = await receive()
    assert message["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    tls = scope["extensions"].get("tls")
    await send({"type": "websocket.send",
                "text": json.dumps({"scheme": scope["scheme"], "tls": tls})})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": message.get("text") or ""})
