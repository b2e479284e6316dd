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

# Sent in every response: its reference count must not grow with them.
SHARED_HEADER = (b"x-churn", b"1")

# Objects the cycle collector freed since start: cyclic garbage.
COLLECTED = [0]


def _on_gc(phase: str, info: dict) -> None:
    if phase == "stop":
        COLLECTED[0] += info["collected"]


gc.callbacks.append(_on_gc)


def report(types: int = 0) -> dict:
    gc.collect()
    objs = gc.get_objects()
    out = {
        "counters": _cdaphne._debug_counters(),
        "objects": len(objs),
        "collected": COLLECTED[0],
        "shared_header_refs": sys.getrefcount(SHARED_HEADER),
        "tasks": len(asyncio.all_tasks()),
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


async def http(scope, receive, send) -> None:
    msg = await receive()
    if scope["path"] == "/raise":
        raise RuntimeError(f"app failed on {msg['type']}")
    if scope["path"] == "/_report":
        q = parse_qs(scope["query_string"].decode())
        body = json.dumps(report(int(q.get("types", ["0"])[0]))).encode()
    else:
        body = b"Hello, world!"
    # Built per response, as real apps do.
    headers = [(b"content-type", b"text/plain"),
               (b"content-length", str(len(body)).encode()), SHARED_HEADER]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def websocket(scope, receive, send) -> None:
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
