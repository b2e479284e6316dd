"""cdaphne.pubsub from a raw ASGI app, for tests/test_pubsub.py.

WebSocket ``/ws`` (any path): on connect the server says ``hello <pid>``.
Each text message from the client is a JSON command, answered with
``ack <n>`` once done (``err <Type>: <message>`` if send() raised):

    {"op": "sub"|"unsub", "topic": t}
    {"op": "pub", "topic": t, "text": s} or "bytes": hex, "exclude_self": bool
    {"op": "send", "text": s}          a plain websocket.send

``/early``: subscribes before the accept, then accepts and sends what
send() raised.  HTTP: ``/publish?topic=t&text=s`` (a send() message from
an HTTP scope), ``/thread?topic=t&n=N&size=S`` (N messages "0".."N-1",
each padded with " " and S "x", published from a plain thread),
``/other-loop`` (makes, runs and closes another cdaphne loop in a thread),
``/threads?topic=t&n=N&threads=T`` (T threads at once, thread k publishing
"k:0".."k:N-1"), ``/scope`` (the extensions), ``/stats``.
"""

from __future__ import annotations

import json
import os
import threading
from urllib.parse import parse_qs

from cdaphne import _cdaphne, pubsub


async def lifespan(receive, send):
    while True:
        msg = await receive()
        await send({"type": msg["type"] + ".complete"})
        if msg["type"] == "lifespan.shutdown":
            return


async def reply(send, body: object, status: int = 200) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": data})


def thread_publish(topic: str, n: int, size: int) -> None:
    pad = " " + "x" * size if size else ""
    for i in range(n):
        pubsub.publish(topic, text=f"{i}{pad}")


def threads_publish(topic: str, k: int, n: int) -> None:
    for i in range(n):
        pubsub.publish(topic, text=f"{k}:{i}")


async def http(scope, receive, send):
    q = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    path = scope["path"]
    if path == "/publish":
        await send({"type": "cdaphne.pubsub.publish", "topic": q["topic"], "text": q["text"]})
        await reply(send, "ok")
    elif path == "/thread":
        t = threading.Thread(
            target=thread_publish, args=(q["topic"], int(q["n"]), int(q.get("size", 0)))
        )
        t.start()
        # Answer once the thread is done (joined off the loop).
        import asyncio

        await asyncio.get_running_loop().run_in_executor(None, t.join)
        await reply(send, "ok")
    elif path == "/threads":
        # T threads at once, thread k publishing "k:0".."k:N-1".
        ts = [
            threading.Thread(target=threads_publish, args=(q["topic"], k, int(q["n"])))
            for k in range(int(q["threads"]))
        ]
        for t in ts:
            t.start()
        import asyncio

        for t in ts:
            await asyncio.get_running_loop().run_in_executor(None, t.join)
        await reply(send, "ok")
    elif path == "/other-loop":
        # Another cdaphne loop in this process, made and closed in a thread
        # while the server's runs (as app code may do).
        from cdaphne.loop import new_event_loop

        def other() -> None:
            lp = new_event_loop()
            lp.run_until_complete(asyncio.sleep(0))
            lp.close()

        import asyncio

        t = threading.Thread(target=other)
        t.start()
        await asyncio.get_running_loop().run_in_executor(None, t.join)
        await reply(send, "ok")
    elif path == "/scope":
        await reply(send, {k: v for k, v in scope["extensions"].items()})
    elif path == "/stats":
        await reply(send, {**pubsub.stats(), **_cdaphne._debug_counters()})
    else:
        await reply(send, "not found", 404)


async def command(send, text: str) -> None:
    cmd = json.loads(text)
    op = cmd["op"]
    if op == "sub":
        await send({"type": "cdaphne.pubsub.subscribe", "topic": cmd["topic"]})
    elif op == "unsub":
        await send({"type": "cdaphne.pubsub.unsubscribe", "topic": cmd["topic"]})
    elif op == "pub":
        msg = {"type": "cdaphne.pubsub.publish", "topic": cmd["topic"]}
        if "bytes" in cmd:
            msg["bytes"] = bytes.fromhex(cmd["bytes"])
        else:
            msg["text"] = cmd["text"]
        if "exclude_self" in cmd:
            msg["exclude_self"] = cmd["exclude_self"]
        await send(msg)
    elif op == "send":
        await send({"type": "websocket.send", "text": cmd["text"]})


async def websocket(scope, receive, send):
    await receive()  # websocket.connect
    if scope["path"] == "/early":
        try:
            await send({"type": "cdaphne.pubsub.subscribe", "topic": "t"})
            error = "none"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": error})
    else:
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": f"hello {os.getpid()}"})
    n = 0
    while True:
        msg = await receive()
        if msg["type"] == "websocket.disconnect":
            return
        n += 1
        try:
            await command(send, msg["text"])
        except Exception as exc:
            await send({"type": "websocket.send", "text": f"err {type(exc).__name__}: {exc}"})
            continue
        await send({"type": "websocket.send", "text": f"ack {n}"})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
    elif scope["type"] == "http":
        await http(scope, receive, send)
    elif scope["type"] == "websocket":
        await websocket(scope, receive, send)
