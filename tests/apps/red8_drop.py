"""Apps whose receive() awaitables outlive their connection in another
thread, for tests/test_red8_drop.py.

Each connection's app calls receive() without awaiting it and hands the
awaitable to a plain thread, then serves the connection to its end and
returns.  The thread waits until the app has returned and the client is
gone, tries to drive the awaitable (RuntimeError: not the loop's thread),
and drops the last reference there: the connection's cycle (its
WebSocket state, its pub/sub subscriptions) is freed off the loop's
thread while the loop goes on serving.  ``/stats`` reports what the
threads saw; ``/pub`` publishes "published" to topic "t".
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

from cdaphne import _cdaphne

outcomes: list[str] = []
_lock = threading.Lock()


def holder(aw, done: threading.Event, delay: float) -> None:
    done.wait(30)
    time.sleep(delay)  # the conn is closed and freed meanwhile
    try:
        aw.__await__().send(None)
    except StopIteration:
        what = "returned"
    except RuntimeError:
        what = "RuntimeError"
    except BaseException as exc:  # noqa: BLE001 - reported
        what = type(exc).__name__
    else:
        what = "yielded"
    del aw  # the last reference: off the loop's thread
    with _lock:
        outcomes.append(what)


def hand_off(aw, delay: float) -> threading.Event:
    done = threading.Event()
    threading.Thread(target=holder, args=(aw, done, delay), daemon=True).start()
    return done


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            await send({"type": msg["type"] + ".complete"})
            if msg["type"] == "lifespan.shutdown":
                return
    delay = float(scope["query_string"].decode() or "0.2")
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        if scope["path"] == "/sub":
            await send({"type": "cdaphne.pubsub.subscribe", "topic": "t"})
            await send({"type": "cdaphne.pubsub.subscribe", "topic": "u"})
        done = hand_off(receive(), delay)
        try:
            while True:
                msg = await receive()
                if msg["type"] == "websocket.disconnect":
                    return
                await send({"type": "websocket.send", "text": msg.get("text")})
        finally:
            done.set()
    if scope["path"] == "/stats":
        with _lock:
            body = json.dumps(
                {"outcomes": list(outcomes), "counters": _cdaphne._debug_counters()}
            ).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    if scope["path"] == "/pub":
        await send({"type": "cdaphne.pubsub.publish", "topic": "t", "text": "published"})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    done = hand_off(receive(), delay)
    try:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        await asyncio.sleep(0)
    finally:
        done.set()
