"""tests/test_audit8_*.py: tests.apps.http1 for HTTP, plus

``/_flood``: a report of the WebSocket ``/flood``'s progress.
WebSocket ``/flood``: accepts, then sends 64 KiB binary messages (64 MiB in
all) to a peer that may never read; records the bytes whose send()
returned, and how it ended.
"""

from __future__ import annotations

import json

from . import http1

FLOOD: dict[str, object] = {"sent": 0, "ended": None}


async def app(scope, receive, send):
    if scope["type"] == "http":
        if scope["path"] == "/_flood":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": json.dumps(FLOOD).encode()})
            return
        await http1.app(scope, receive, send)
        return
    if scope["type"] != "websocket":
        return
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    chunk = b"x" * (64 << 10)
    FLOOD["sent"], FLOOD["ended"] = 0, None
    try:
        while FLOOD["sent"] < 64 << 20:
            await send({"type": "websocket.send", "bytes": chunk})
            FLOOD["sent"] += len(chunk)
        FLOOD["ended"] = "all sent"
    except Exception as exc:  # the peer left: send() raises
        FLOOD["ended"] = type(exc).__name__
