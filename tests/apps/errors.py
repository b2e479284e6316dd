"""Apps that fail in every way an app can, plus side endpoints."""

from __future__ import annotations

import asyncio
import time

from .common import jsonable, query, read_body, send_json, send_text

REPORT: dict[str, object] = {}


async def app(scope, receive, send):
    if scope["type"] != "http":
        raise RuntimeError("http only")
    path = scope["path"]
    if path == "/ok":
        await send_text(send, b"ok")
    elif path == "/raise":
        raise ValueError("boom before the response")
    elif path == "/raise_after_start":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise ValueError("boom after the response started")
    elif path == "/raise_after_start_cl":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"100")]})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise ValueError("boom after the response started")
    elif path == "/no_response":
        return
    elif path == "/start_only":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        return
    elif path == "/block_then_sleep":
        # Blocks the loop past the server's own timer, then waits.
        time.sleep(float(query(scope).get("block", "1.5")))
        await asyncio.sleep(float(query(scope).get("s", "8")))
    elif path == "/sleep":
        # Never responds before ?s= seconds (http-timeout, close timeout).
        delay = float(query(scope).get("s", "5"))
        key = query(scope).get("key", "sleep")
        REPORT[key] = "started"
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            REPORT[key] = "cancelled"
            raise
        REPORT[key] = "finished"
        try:
            await send_text(send, b"late")
        except Exception as exc:  # noqa: BLE001 - recorded for the test
            REPORT[key + "_send"] = repr(exc)
    elif path == "/hold":
        # Reads the body, then waits for http.disconnect; ignores it for ?s=.
        await read_body(receive)
        msg = await receive()
        REPORT["hold_disconnect"] = msg
        t0 = time.monotonic()
        try:
            await asyncio.sleep(float(query(scope).get("s", "30")))
            REPORT["hold"] = "not cancelled"
        except asyncio.CancelledError:
            REPORT["hold"] = {"cancelled_after": time.monotonic() - t0}
            raise
    elif path == "/bad_send":
        kind = query(scope).get("kind")
        try:
            if kind == "no_status":
                await send({"type": "http.response.start", "headers": []})
            elif kind == "str_headers":
                await send({"type": "http.response.start", "status": 200,
                            "headers": [("a", "b")]})
            elif kind == "twice":
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.start", "status": 200, "headers": []})
            elif kind == "bad_name":
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"x bad:name", b"v")]})
            elif kind == "crlf_value":
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"x-a", b"v\r\nx-injected: 1")]})
            elif kind == "too_long":
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-length", b"2")]})
                await send({"type": "http.response.body", "body": b"abc"})
        except Exception as exc:  # noqa: BLE001 - recorded for the test
            REPORT["bad_send_" + kind] = type(exc).__name__
            raise
    elif path == "/_report":
        key = query(scope).get("key")
        await send_json(send, {"present": key in REPORT, "value": jsonable(REPORT.get(key))})
    else:
        await send_text(send, b"not found", 404)
