"""App for the connection-lifetime tests (shutdown, timeouts, body rate).

What the app saw is written to files in $CDAPHNE_TEST_DIR, so that tests
can observe an app whose client is gone (or a server that has exited).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from .common import jsonable, query, send_json, send_text


def _record(name: str, data: object) -> None:
    out = os.environ.get("CDAPHNE_TEST_DIR")
    if out:
        path = Path(out) / name
        path.with_suffix(".tmp").write_text(json.dumps(data))
        path.with_suffix(".tmp").replace(path)


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    handler = ROUTES.get(scope["path"], hello)
    await handler(scope, receive, send)


async def hello(scope, receive, send):
    await send_text(send, b"ok")


async def server_view(scope, receive, send):
    """Answers the scope's server and client."""
    await send_json(send, {"server": jsonable(scope["server"]),
                           "client": jsonable(scope["client"])})


async def forever(scope, receive, send):
    """Sleeps until cancelled; records when and how it ended."""
    t0 = time.monotonic()
    _record("forever_started", {"t": t0})
    outcome = "returned"
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    finally:
        _record("forever", {"outcome": outcome, "after": time.monotonic() - t0})


async def own_deadline(scope, receive, send):
    """Reads the request and its disconnect; then a deadline of its own
    (asyncio.timeout) runs out in the same loop turn as the server's
    application_close_timeout (the loop is blocked ?block= seconds past
    both), and it waits in receive() again.  Records how it ended."""
    t0 = time.monotonic()
    outcome = "returned"
    try:
        await receive()
        msg = await receive()
        _record("own_deadline_disconnect", {"msg": msg})
        try:
            async with asyncio.timeout(0.001):
                time.sleep(float(query(scope).get("block", "0")))
                await asyncio.sleep(3600)
        except TimeoutError:
            pass
        await receive()
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    finally:
        _record("own_deadline", {"outcome": outcome, "after": time.monotonic() - t0})


async def upload(scope, receive, send):
    """Reads the body (after ?delay= seconds); records its size and the
    last message type."""
    await asyncio.sleep(float(query(scope).get("delay", "0")))
    t0 = time.monotonic()
    size = 0
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            _record("upload", {"size": size, "last": msg["type"],
                               "after": time.monotonic() - t0})
            return
        size += len(msg.get("body", b""))
        if not msg.get("more_body", False):
            break
    _record("upload", {"size": size, "last": "http.request",
                       "after": time.monotonic() - t0})
    await send_text(send, f"got {size}")


async def upload_streaming(scope, receive, send):
    """Starts its response first, then reads the body."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"started;", "more_body": True})
    size = 0
    last = "http.request"
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            last = msg["type"]
            break
        size += len(msg.get("body", b""))
        if not msg.get("more_body", False):
            break
    _record("upload", {"size": size, "last": last})
    if last == "http.request":
        await send({"type": "http.response.body", "body": f"got {size}".encode()})


async def wait_disconnect(scope, receive, send):
    """Reads the body, then waits in receive() for the client to leave."""
    while (await receive()).get("more_body", False):
        pass
    _record("waiting", {"t": time.monotonic()})
    msg = await receive()
    _record("wait_disconnect", {"msg": msg})
    await send_text(send, b"late")


async def start_then_wait(scope, receive, send):
    """Reads the body, starts its response a little later (the client's
    FIN comes first), then waits in receive() before the body."""
    while (await receive()).get("more_body", False):
        pass
    await asyncio.sleep(0.3)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    msg = await receive()
    _record("start_then_wait", {"msg": msg})
    await send({"type": "http.response.body", "body": b"late"})


async def stream_forever(scope, receive, send):
    """Streams chunks and never reads; records how it ended."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    _record("stream_started", {})
    outcome = "returned"
    try:
        while True:
            await send({"type": "http.response.body", "body": b"x" * 1024, "more_body": True})
            await asyncio.sleep(0.02)
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    finally:
        _record("stream", {"outcome": outcome})


ROUTES = {
    "/server": server_view,
    "/wait_disconnect": wait_disconnect,
    "/start_then_wait": start_then_wait,
    "/forever": forever,
    "/own_deadline": own_deadline,
    "/upload": upload,
    "/upload_streaming": upload_streaming,
    "/stream_forever": stream_forever,
}
