"""Probes of the bounds that have a flag since the fourth session, for
tests/test_bounds_flags.py.

HTTP:
``/inbox?n=N&size=S``: a plain thread calls ``pubsub_publish`` up to N
times (text of S bytes) while the loop thread waits for it (joined on the
loop thread, so nothing drains the inbox); answers how many were taken
before the inbox said full.
``/burst?topic=t&n=N&tag=x``: N ``pubsub.publish()`` calls ("x 0".."x N-1")
on the loop thread in one go (nothing else runs in between).
``/chunks``: reads the request body, answers its size and the largest
``http.request`` body the app was given (slowly: 5 ms per message).
``/digest``: reads the request body, answers its size, its SHA-256 and the
length of the ``x-big`` request header.
WebSocket ``/sub?topic=t``: subscribes, says ``ready``, then only listens.
WebSocket ``/echo``: sends every message back as it came (text or bytes).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from urllib.parse import parse_qs

from cdaphne import _cdaphne, pubsub


async def reply(send, body: object) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


def fill_inbox(n: int, size: int, taken: list[int]) -> None:
    data = "x" * size
    for _ in range(n):
        if not _cdaphne.pubsub_publish("inbox", data, True):
            return
        taken[0] += 1


async def http(scope, receive, send):
    q = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    path = scope["path"]
    if path == "/inbox":
        taken = [0]
        t = threading.Thread(target=fill_inbox, args=(int(q["n"]), int(q["size"]), taken))
        t.start()
        t.join()  # On the loop thread: the inbox is not drained meanwhile.
        await reply(send, taken[0])
    elif path == "/burst":
        for i in range(int(q["n"])):
            pubsub.publish(q["topic"], text=f"{q['tag']} {i}")
        await reply(send, "ok")
    elif path == "/chunks":
        size = largest = 0
        more = True
        while more:
            msg = await receive()
            body = msg.get("body", b"")
            size += len(body)
            largest = max(largest, len(body))
            more = msg.get("more_body", False)
            await asyncio.sleep(0.005)
        await reply(send, {"size": size, "largest": largest})
    elif path == "/digest":
        digest = hashlib.sha256()
        size = 0
        more = True
        while more:
            msg = await receive()
            body = msg.get("body", b"")
            size += len(body)
            digest.update(body)
            more = msg.get("more_body", False)
        big = dict(scope["headers"]).get(b"x-big", b"")
        await reply(send, {"size": size, "sha256": digest.hexdigest(), "x-big": len(big)})
    else:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def echo(receive, send):
    while True:
        msg = await receive()
        if msg["type"] == "websocket.disconnect":
            return
        if msg.get("text") is not None:
            await send({"type": "websocket.send", "text": msg["text"]})
        else:
            await send({"type": "websocket.send", "bytes": msg["bytes"]})


async def websocket(scope, receive, send):
    q = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    if scope["path"] == "/echo":
        await echo(receive, send)
        return
    await send({"type": "cdaphne.pubsub.subscribe", "topic": q["topic"]})
    await send({"type": "websocket.send", "text": "ready"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def app(scope, receive, send):
    if scope["type"] == "http":
        await http(scope, receive, send)
    elif scope["type"] == "websocket":
        await websocket(scope, receive, send)
