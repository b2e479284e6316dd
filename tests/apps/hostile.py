"""A hostile or buggy app for tests/test_hostile_apps.py: the response's
status, headers and body parts come from the request's JSON body, so one
server sends whatever such an app would."""

from __future__ import annotations

import json


def _b(v):
    return v.encode("latin-1") if isinstance(v, str) else v


async def app(scope, receive, send):
    if scope["type"] != "http":
        raise RuntimeError("http only")
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    spec = json.loads(body or b"{}")
    headers = [(_b(n), _b(v)) for n, v in spec.get("headers", [])]
    await send(
        {"type": "http.response.start", "status": spec.get("status", 200), "headers": headers}
    )
    for part in spec.get("body", ["hello"]):
        await send({"type": "http.response.body", "body": _b(part), "more_body": True})
    await send({"type": "http.response.body", "body": b""})
