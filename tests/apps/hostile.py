"""A hostile or buggy app for tests/test_hostile_apps.py: the response's
status, headers and body parts come from the request's JSON body, so one
server sends whatever such an app would."""

from __future__ import annotations

import asyncio
import json

KEPT: dict = {}


def _b(v):
    return v.encode("latin-1") if isinstance(v, str) else v


async def app(scope, receive, send):
    if scope["type"] != "http":
        raise RuntimeError("http only")
    if scope["path"] == "/late":
        await late(send)
        return
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    spec = json.loads(body or b"{}")
    if spec.get("keep"):
        KEPT["http"] = (receive, send)
    headers = [(_b(n), _b(v)) for n, v in spec.get("headers", [])]
    await send(
        {"type": "http.response.start", "status": spec.get("status", 200), "headers": headers}
    )
    for part in spec.get("body", ["hello"]):
        await send({"type": "http.response.body", "body": _b(part), "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def late(send):
    """Calls the receive() and send() of a request long answered (kept by
    {"keep": true}), and answers with what each returned or raised."""
    receive_, send_ = KEPT.pop("http")
    calls = [
        lambda: receive_(),
        lambda: send_({"type": "http.response.start", "status": 200}),
        lambda: send_({"type": "http.response.body", "body": b"late"}),
        lambda: receive_(),
    ]
    out = []
    for call in calls:
        try:
            out.append(repr(await asyncio.wait_for(call(), 0.2)))
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            out.append(type(exc).__name__)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": "\n".join(out).encode()})
