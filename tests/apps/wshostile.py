"""Hostile or buggy WebSocket apps for tests/test_ws_hostile.py, picked by
the path."""

from __future__ import annotations

import asyncio

KEPT: dict = {}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        raise RuntimeError("no lifespan here")
    path = scope["path"]
    if scope["type"] == "http":
        if path == "/late":
            # Calls the receive/send of a WebSocket long gone.
            r, s = KEPT.pop("ws")
            out = []
            for call in (
                lambda: r(),
                lambda: s({"type": "websocket.send", "text": "x"}),
                lambda: s({"type": "websocket.close"}),
            ):
                try:
                    out.append(repr(await asyncio.wait_for(call(), 0.2)))
                except BaseException as exc:  # noqa: BLE001
                    out.append(type(exc).__name__)
            body = "\n".join(out).encode()
        else:
            body = b"ok"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    await receive()
    if path == "/deny-bad-status":
        await send({"type": "websocket.http.response.start", "status": 101, "headers": []})
    elif path == "/deny-bad-header":
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 403,
                "headers": [(b"x-a", b"a\r\nb")],
            }
        )
    elif path == "/deny-no-body":
        await send({"type": "websocket.http.response.start", "status": 403, "headers": []})
    elif path == "/deny-then-raise":
        await send({"type": "websocket.http.response.start", "status": 403, "headers": []})
        await send({"type": "websocket.http.response.body", "body": b"no", "more_body": True})
        raise ValueError("boom while denying")
    elif path == "/accept-bad-header":
        await send({"type": "websocket.accept", "headers": [(b"x-a", b"a\x01b")]})
    elif path == "/two-receivers":
        await two_receivers(receive, send)
    elif path == "/keep":
        await send({"type": "websocket.accept"})
        KEPT["ws"] = (receive, send)
        while (await receive())["type"] != "websocket.disconnect":
            pass


async def two_receivers(receive, send):
    """Two tasks in receive() at once: every message reaches one of them."""
    await send({"type": "websocket.accept"})
    got: list = []

    async def loop(name):
        while True:
            m = await receive()
            got.append((name, m.get("text")))
            if m["type"] == "websocket.disconnect" or m.get("text") == "end":
                return

    a = asyncio.ensure_future(loop("a"))
    b = asyncio.ensure_future(loop("b"))
    done, pending = await asyncio.wait([a, b], return_when=asyncio.FIRST_COMPLETED)
    texts = sorted(t for _, t in got if t is not None)
    await send({"type": "websocket.send", "text": ",".join(texts)})
    for t in pending:
        t.cancel()
