"""A WebSocket app whose behaviour the path picks; HTTP GET /events tells
what the WebSocket side saw (one JSON list of events per test)."""

from __future__ import annotations

import asyncio
import json
import sys
import weakref

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


async def kept_futures(receive, send) -> None:
    """The server may make a done receive() future new again only when
    nothing else holds it: futures the app kept (strongly, by weak
    reference, or with an attribute set) must stay as they were."""
    await send({"type": "websocket.accept"})
    task = asyncio.current_task()
    seen: list[str] = []
    kept: dict = {}

    async def watch(n: int) -> None:
        # Runs while the app waits in receive(): the future it waits on.
        fut = task._fut_waiter
        if fut is None:
            seen.append(f"{n}: not waiting")
            return
        if "strong" in kept and fut is kept["strong"]:
            seen.append(f"{n}: kept future reused")
        if "weak" in kept and kept["weak"]() is fut:
            seen.append(f"{n}: weakly kept future reused")
        if hasattr(fut, "marker"):
            seen.append(f"{n}: future with an attribute reused")
        if n == 1:
            kept["strong"] = fut
        elif n == 2:
            kept["weak"] = weakref.ref(fut)
        elif n == 3:
            fut.marker = n

    for n in range(1, 9):
        # The client sends each message once it has the answer to the one
        # before: the app waits in receive() for each.
        watcher = asyncio.ensure_future(watch(n))
        message = await receive()
        await watcher
        if message["type"] != "websocket.receive":
            return
        await send({"type": "websocket.send", "text": f"ack {n}"})
    strong = kept["strong"]
    if not (strong.done() and strong.result() is None):
        seen.append("kept future changed")
    weak = kept["weak"]()
    if weak is not None and not (weak.done() and weak.result() is None):
        seen.append("weakly kept future changed")
    await send({"type": "websocket.send", "text": json.dumps(seen)})
    await drain(receive)


async def kept_receives(receive, send) -> None:
    """receive() awaitables the app keeps are not handed out again."""
    await send({"type": "websocket.accept"})
    got = []
    r1 = receive()
    got.append((await r1)["text"])
    r2 = receive()
    got.append(r2 is r1)
    got.append((await r2)["text"])
    got.append(await r1)
    receive()  # never awaited, dropped
    got.append((await receive())["text"])
    await send({"type": "websocket.send", "text": json.dumps(got)})
    await drain(receive)


async def by_hand(receive) -> StopIteration:
    """A receive() driven as a plain iterator: its StopIteration."""
    it = receive().__await__()
    while True:
        try:
            fut = it.send(None)
        except StopIteration as exc:
            return exc
        await asyncio.wait([fut])


async def hand_driven(receive, send) -> None:
    """The StopIteration each receive() returns its message in stays the
    app's: a later receive() does not change one the app kept."""
    await send({"type": "websocket.accept"})
    kept = [await by_hand(receive) for _ in range(3)]
    texts = [[e.value["text"], e.args[0]["text"]] for e in kept]
    distinct = len({id(e) for e in kept})
    await send({"type": "websocket.send", "text": json.dumps([texts, distinct])})
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
    elif path == "/say-disconnect":
        # What the app hears, on stderr: the server's log outlives it.
        await send({"type": "websocket.accept"})
        message = await drain(receive)
        print("app heard", json.dumps(message, sort_keys=True), file=sys.stderr, flush=True)
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
    elif path == "/kept-futures":
        await kept_futures(receive, send)
    elif path == "/kept-receives":
        await kept_receives(receive, send)
    elif path == "/hand-driven":
        await hand_driven(receive, send)
    elif path == "/answer-late":
        # A handshake not yet answered when the stop begins: what the app
        # hears, then what its accept does, on stderr.
        print("app waits", file=sys.stderr, flush=True)
        message = await receive()
        print("app heard", json.dumps(message, sort_keys=True), file=sys.stderr, flush=True)
        try:
            await send({"type": "websocket.accept"})
            print("app accept returned", file=sys.stderr, flush=True)
        except Exception as exc:
            print("app accept raised", type(exc).__name__, file=sys.stderr, flush=True)
    elif path == "/never-accept":
        await asyncio.sleep(60)
    elif path == "/send-both":
        # ASGI: exactly one of bytes and text is not None; with both the
        # bytes go out (uvicorn, Hypercorn; see README).
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "bytes": b"the bytes", "text": "the text"})
        await send({"type": "websocket.send", "bytes": b"", "text": "the text"})
        await send({"type": "websocket.send", "bytes": None, "text": "only text"})
        await drain(receive)
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
