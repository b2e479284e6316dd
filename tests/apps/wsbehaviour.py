"""A WebSocket app whose behaviour the path picks; HTTP GET /events tells
what the WebSocket side saw (one JSON list of events per test)."""

from __future__ import annotations

import asyncio
import json

EVENTS: list[dict] = []
SENT = {"bytes": 0}
# /hold and /hold-accept wait for GET /release before they go on.
HOLD: dict[str, asyncio.Event] = {}


async def http(scope, receive, send):
    if scope["path"] == "/events":
        body = json.dumps(EVENTS).encode()
    elif scope["path"] == "/sent":
        body = json.dumps(SENT).encode()
    elif scope["path"] == "/release":
        body = json.dumps({"released": "hold" in HOLD}).encode()
        if "hold" in HOLD:
            HOLD.pop("hold").set()
    else:
        body = b"not found"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def record(kind: str, **data) -> None:
    EVENTS.append({"event": kind, **data})


async def drain(receive) -> dict:
    """Receive until websocket.disconnect, recording each message."""
    while True:
        message = await receive()
        record(message["type"], **{k: v for k, v in message.items()
                                  if k in ("code", "reason", "text")})
        if message["type"] == "websocket.disconnect":
            return message


async def patched_create_future(receive, send) -> None:
    """After one message, the loop class's create_future is replaced: the
    futures the server makes for receive() must come from it from then on."""
    await send({"type": "websocket.accept"})
    await receive()
    cls = type(asyncio.get_running_loop())
    had_own = "create_future" in cls.__dict__
    original = cls.create_future
    calls = []

    def counting(self):
        calls.append(1)
        return original(self)

    cls.create_future = counting
    try:
        await send({"type": "websocket.send", "text": "patched"})
        await receive()
    finally:
        if had_own:
            cls.create_future = original
        else:
            del cls.create_future
    await send({"type": "websocket.send", "text": f"calls {len(calls)}"})
    await drain(receive)


async def instance_create_future(receive, send) -> None:
    """Likewise with create_future set on the loop instance."""
    await send({"type": "websocket.accept"})
    await receive()
    loop = asyncio.get_running_loop()
    original = loop.create_future
    calls = []

    def counting():
        calls.append(1)
        return original()

    loop.create_future = counting
    try:
        await send({"type": "websocket.send", "text": "patched"})
        await receive()
    finally:
        del loop.create_future
    await send({"type": "websocket.send", "text": f"calls {len(calls)}"})
    await drain(receive)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        raise RuntimeError("no lifespan here")
    if scope["type"] == "http":
        return await http(scope, receive, send)
    path = scope["path"]
    connect = await receive()
    record("connect", type=connect["type"])
    if path == "/scope":
        await send({"type": "websocket.accept", "subprotocol": "chat.v2",
                    "headers": [(b"x-extra", b"yes")]})
        visible = {k: v for k, v in scope.items() if k not in ("headers", "asgi", "state")}
        visible["has_method"] = "method" in scope
        visible["query_string"] = scope["query_string"].decode()
        visible["raw_path"] = scope["raw_path"].decode()
        visible["client"] = list(scope["client"])
        visible["server"] = list(scope["server"])
        await send({"type": "websocket.send", "text": json.dumps(visible)})
        await drain(receive)
    elif path == "/reject":
        await send({"type": "websocket.close"})
        await drain(receive)
    elif path == "/deny":
        await send({"type": "websocket.http.response.start", "status": 401,
                    "headers": [(b"content-type", b"text/plain"), (b"x-why", b"token")]})
        await send({"type": "websocket.http.response.body", "body": b"no ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"entry"})
    elif path == "/close":
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4001, "reason": "bye now"})
        await drain(receive)
    elif path == "/record":
        await send({"type": "websocket.accept"})
        await drain(receive)
    elif path == "/crash":
        await send({"type": "websocket.accept"})
        raise ValueError("boom after accept")
    elif path == "/crash-before-accept":
        raise ValueError("boom before accept")
    elif path == "/return":
        await send({"type": "websocket.accept"})
    elif path == "/patch-create-future":
        await patched_create_future(receive, send)
    elif path == "/instance-create-future":
        await instance_create_future(receive, send)
    elif path == "/never-accept":
        await asyncio.sleep(60)
    elif path == "/send-before-accept":
        try:
            await send({"type": "websocket.send", "text": "too early"})
        except RuntimeError as exc:
            record("send-error", text=str(exc))
        await send({"type": "websocket.close"})
    elif path == "/stall":
        # Stops receiving: only the application close timeout, armed once
        # the server saw the client leave, ends the wait.
        await send({"type": "websocket.accept"})
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            record("stall-cancelled")
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                record("websocket.disconnect", code=message["code"])
                return
    elif path in ("/hold", "/hold-accept"):
        # Receives nothing until GET /release (before accepting, for
        # /hold-accept), then echoes.
        HOLD["hold"] = release = asyncio.Event()
        if path == "/hold":
            await send({"type": "websocket.accept"})
        await release.wait()
        if path == "/hold-accept":
            await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "bytes": message["bytes"]})
    elif path == "/flood":
        await send({"type": "websocket.accept"})
        chunk = b"x" * 65536
        for _ in range(3200):  # 200 MiB
            await send({"type": "websocket.send", "bytes": chunk})
            SENT["bytes"] += len(chunk)
        await send({"type": "websocket.close"})
    else:
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                record("websocket.disconnect", code=message["code"])
                return
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"]})
