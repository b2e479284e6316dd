"""Apps for Daphne-parity tests (issue 10): an app that keeps the CPU after
its response, receive() after the end, the scope's root_path and headers.

/_report?key=... returns what the app saw (JSON) on a later request.
"""

from __future__ import annotations

import asyncio
import json
import time

from .common import query, read_body, send_json, send_text

REPORT: dict[str, object] = {}


async def app(scope, receive, send):
    if scope["type"] == "websocket":
        await ws(scope, receive, send)
        return
    if scope["type"] != "http":
        return
    path = scope["path"]
    q = query(scope)
    if path == "/_report":
        await send_json(send, REPORT.get(q["key"]))
    elif path == "/busy":
        await read_body(receive)
        await send_text(send, b"answered before the busy loop")
        end = time.monotonic() + float(q["s"])
        while time.monotonic() < end:  # CPU work after the response
            pass
    elif path == "/block":
        await read_body(receive)
        await send_text(send, b"answered before blocking")
        time.sleep(float(q["s"]))  # blocks in C
    elif path == "/receive_after_end":
        await read_body(receive)
        await send_text(send, b"done")
        first = await receive()
        try:
            second = await asyncio.wait_for(receive(), 0.3)
        except TimeoutError:
            second = "waited"
        REPORT[q["key"]] = {"first": first, "second": second}
    else:
        await read_body(receive)
        await send_json(send, {"root_path": scope["root_path"], "path": scope["path"],
                               "headers": [[n.decode("latin-1"), v.decode("latin-1")]
                                           for n, v in scope["headers"]]})


async def ws_refused(q, receive, send):
    # Refuses the handshake, then keeps calling receive(): after the one
    # websocket.disconnect, --application-close-timeout must end the app.
    await send({"type": "websocket.close"})
    first = await receive()
    try:
        await receive()
        second = "returned"
    except asyncio.CancelledError:
        second = "cancelled"
        raise
    finally:
        REPORT[q["key"]] = {"first": first, "second": second}


async def ws(scope, receive, send):
    q = query(scope)
    msg = await receive()
    assert msg["type"] == "websocket.connect"
    if scope["path"] == "/ws_refused":
        return await ws_refused(q, receive, send)
    await send({"type": "websocket.accept"})
    if "key" not in q:
        await send({"type": "websocket.send", "text": json.dumps(
            {"root_path": scope["root_path"],
             "headers": [[n.decode("latin-1"), v.decode("latin-1")]
                         for n, v in scope["headers"]]})})
    first = await receive()
    while first["type"] == "websocket.receive":
        first = await receive()
    try:
        second = await asyncio.wait_for(receive(), 0.3)
    except TimeoutError:
        second = "waited"
    if "key" in q:
        REPORT[q["key"]] = {"first": first, "second": second}
