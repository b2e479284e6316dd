"""A room of WebSocket members that all send in one loop turn, then a
callback that blocks the loop (tests/test_ws_flush.py).

/member: accepts, waits for the room's signal, sends "hello", then waits
for its disconnect.  /go?marker=PATH: on its first message, wakes every
member (each sends in its own callback of the next turn), then queues a
callback behind them that blocks the loop for 2 s and then creates PATH.
"""

import asyncio
import time
from urllib.parse import parse_qs

members: list[asyncio.Event] = []


def block(marker: str) -> None:
    time.sleep(2.0)  # The loop runs nothing else meanwhile.
    with open(marker, "w") as f:
        f.write("done")


async def member(receive, send) -> None:
    go = asyncio.Event()
    members.append(go)
    await send({"type": "websocket.accept"})
    await go.wait()
    await send({"type": "websocket.send", "text": "hello"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def trigger(scope, receive, send) -> None:
    marker = parse_qs(scope["query_string"].decode())["marker"][0]
    await send({"type": "websocket.accept"})
    if (await receive())["type"] != "websocket.receive":
        return
    for go in members:
        go.set()
    asyncio.get_running_loop().call_soon(block, marker)
    await send({"type": "websocket.send", "text": f"woke {len(members)}"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def app(scope, receive, send) -> None:
    if scope["type"] != "websocket":
        return
    first = await receive()
    assert first["type"] == "websocket.connect"
    if scope["path"] == "/member":
        await member(receive, send)
    else:
        await trigger(scope, receive, send)
