"""An app that counts how many of its HTTP requests run at once
(tests/test_admission.py).

    GET /busy?ms=M&chunks=K   K chunks of M ms of CPU, yielding between them
    GET /sleep?s=S            awaits asyncio.sleep(S)
    GET /wait/<key>           awaits /set/<key> (10 s at most: then 504)
    GET /set/<key>
    GET /busy-until-ws        CPU in 5 ms chunks until a WebSocket has
                              connected (400 ms of CPU at most); says "ws" or
                              "no ws"
    GET /stats                the most requests seen running at once, reset
    WebSocket                 accepted; marks that one connected
"""

from __future__ import annotations

import asyncio
import sys
import time
from urllib.parse import parse_qs

running = 0
most = 0
events: dict[str, asyncio.Event] = {}
ws_connected = False


def burn(ms: float) -> None:
    end = time.thread_time() + ms / 1000
    while time.thread_time() < end:
        pass


async def respond(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


async def handle(path: str, query: dict[str, list[str]]) -> tuple[int, bytes]:
    if path == "/busy":
        for _ in range(int(query["chunks"][0])):
            burn(float(query["ms"][0]))
            await asyncio.sleep(0)
        return 200, b"done"
    if path == "/sleep":
        await asyncio.sleep(float(query["s"][0]))
        return 200, b"slept"
    if path.startswith("/wait/"):
        event = events.setdefault(path[6:], asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), 10)
        except TimeoutError:
            return 504, b"never set"
        return 200, b"set"
    if path.startswith("/set/"):
        events.setdefault(path[5:], asyncio.Event()).set()
        return 200, b"ok"
    if path == "/busy-until-ws":
        for _ in range(80):
            if ws_connected:
                return 200, b"ws"
            burn(5)
            await asyncio.sleep(0)
        return 200, b"no ws"
    return 404, b"no such path"


async def app(scope, receive, send):
    global running, most, ws_connected
    if scope["type"] == "websocket":
        await receive()
        ws_connected = True
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass
        return
    if scope["type"] != "http":
        return
    if scope["path"] == "/stats":
        seen, most = most, 0
        await respond(send, 200, str(seen).encode())
        return
    # Each app's start and end, for tests that tell apps apart by query.
    target = f"{scope['path']}?{scope['query_string'].decode()}"
    print("admission app: start", target, file=sys.stderr, flush=True)
    running += 1
    most = max(most, running)
    try:
        status, body = await handle(scope["path"], parse_qs(scope["query_string"].decode()))
    finally:
        running -= 1
        print("admission app: end", target, file=sys.stderr, flush=True)
    await respond(send, status, body)
