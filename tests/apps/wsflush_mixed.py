"""A room whose members end differently while one loop turn sends to all
of them (tests/test_ws_flush.py): the scheduler flushes between the
turn's callbacks once 8 conns have output queued (CD_LOOP_FLUSH_BATCH).

/member?mode=M waits for the room's signal, then in one callback:
  plain: sends "hello" and "again";
  close: sends "hello" and closes (1000);
  big:   sends 1 MiB, then "hello" and "again".
/go: on each message wakes every member, then answers "woke N".
"""

import asyncio
from urllib.parse import parse_qs

members: list[asyncio.Event] = []


async def member(mode, receive, send) -> None:
    go = asyncio.Event()
    members.append(go)
    await go.wait()
    if mode == "big":
        await send({"type": "websocket.send", "bytes": b"x" * (1 << 20)})
    await send({"type": "websocket.send", "text": "hello"})
    if mode == "close":
        await send({"type": "websocket.close", "code": 1000})
        return
    await send({"type": "websocket.send", "text": "again"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def app(scope, receive, send) -> None:
    if scope["type"] != "websocket":
        return
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    if scope["path"] == "/member":
        mode = parse_qs(scope["query_string"].decode())["mode"][0]
        await member(mode, receive, send)
        return
    while (await receive())["type"] != "websocket.disconnect":
        woken = list(members)
        members.clear()
        for go in woken:
            go.set()
        await send({"type": "websocket.send", "text": f"woke {len(woken)}"})
