"""A raw ASGI app for the churn (leak) tests, and a report of what the
server process holds.

GET /_report answers the C core's live-object counters, the number of
objects gc tracks, the cyclic garbage collected so far, the reference
count of a header pair every response shares, and (with ?types=N) the N
most common live object types.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
from collections import Counter
from urllib.parse import parse_qs

from cdaphne import _cdaphne
from cdaphne.layers import InMemoryChannelLayer

# The chat sessions' channel layer (cdaphne's C layer).
LAYER = InMemoryChannelLayer()

# Sent in every response: its reference count must not grow with them.
SHARED_HEADER = (b"x-churn", b"1")

# Objects the cycle collector freed since start: cyclic garbage.
COLLECTED = [0]


def _on_gc(phase: str, info: dict) -> None:
    if phase == "stop":
        COLLECTED[0] += info["collected"]


gc.callbacks.append(_on_gc)


def report(types: int = 0) -> dict:
    LAYER.sweep()  # Idle channels are reclaimed within a second anyway.
    gc.collect()
    objs = gc.get_objects()
    out = {
        "counters": _cdaphne._debug_counters(),
        "objects": len(objs),
        "collected": COLLECTED[0],
        "shared_header_refs": sys.getrefcount(SHARED_HEADER),
        "tasks": len(asyncio.all_tasks()),
        "layer": LAYER.stats(),
    }
    if types:
        hist = Counter(type(o).__qualname__ for o in objs)
        out["types"] = dict(hist.most_common(types))
    del objs
    return out


async def lifespan(receive, send) -> None:
    while True:
        msg = await receive()
        kind = "startup" if msg["type"] == "lifespan.startup" else "shutdown"
        await send({"type": f"lifespan.{kind}.complete"})
        if kind == "shutdown":
            return


def header(name: str, value: str) -> tuple[bytes, bytes]:
    """A header pair made at run time, as Django makes them."""
    return name.encode("ascii"), value.encode("latin-1")


async def http(scope, receive, send) -> None:
    msg = await receive()
    if scope["path"] == "/raise":
        raise RuntimeError(f"app failed on {msg['type']}")
    if scope["path"] == "/_report":
        q = parse_qs(scope["query_string"].decode())
        body = json.dumps(report(int(q.get("types", ["0"])[0]))).encode()
    else:
        body = b"Hello, world!"
    # Built per response, as real apps do (Django sends about as many).
    headers = [header("content-type", "text/plain; charset=utf-8"),
               header("content-length", str(len(body))),
               header("x-frame-options", "DENY"),
               header("x-content-type-options", "nosniff"),
               header("referrer-policy", "same-origin"),
               header("cross-origin-opener-policy", "same-origin"),
               header("vary", "Cookie"),
               SHARED_HEADER]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def chat(scope, receive, send) -> None:
    """A chat session as Channels runs one: join the room's group, relay
    what the client says to the group and what the group says to the
    client, one task per source (Channels' await_many_dispatch), leave."""
    group = "room" + scope["path"].rsplit("/", 1)[-1]
    channel = await LAYER.new_channel()
    await receive()
    await LAYER.group_add(group, channel)
    await send({"type": "websocket.accept"})
    from_client = asyncio.ensure_future(receive())
    from_group = asyncio.ensure_future(LAYER.receive(channel))
    try:
        while True:
            done, _ = await asyncio.wait({from_client, from_group},
                                         return_when=asyncio.FIRST_COMPLETED)
            if from_group in done:
                msg = from_group.result()
                await send({"type": "websocket.send", "text": msg["text"]})
                from_group = asyncio.ensure_future(LAYER.receive(channel))
            if from_client in done:
                msg = from_client.result()
                if msg["type"] == "websocket.disconnect":
                    return
                await LAYER.group_send(group, {"type": "chat.message",
                                               "text": msg["text"]})
                from_client = asyncio.ensure_future(receive())
    finally:
        await LAYER.group_discard(group, channel)
        for task in (from_client, from_group):
            task.cancel()
        await asyncio.gather(from_client, from_group, return_exceptions=True)


async def websocket(scope, receive, send) -> None:
    if scope["path"].startswith("/chat/"):
        await chat(scope, receive, send)
        return
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        msg = await receive()
        if msg["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": msg.get("text"),
                    "bytes": msg.get("bytes")})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
    elif scope["type"] == "http":
        await http(scope, receive, send)
    else:
        await websocket(scope, receive, send)
