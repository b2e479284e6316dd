"""Helpers shared by the test apps."""

from __future__ import annotations

import json
from typing import Any


def jsonable(value: Any) -> Any:
    """Scope values as JSON: bytes as latin-1 text, tuples as lists."""
    if isinstance(value, bytes):
        return {"__bytes__": value.decode("latin-1")}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


async def send_json(send, data: Any, status: int = 200) -> None:
    body = json.dumps(data).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


async def send_text(send, text: bytes | str, status: int = 200,
                    headers: list[tuple[bytes, bytes]] | None = None) -> None:
    if isinstance(text, str):
        text = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain")] + (headers or [])})
    await send({"type": "http.response.body", "body": text})


async def read_body(receive) -> tuple[bytes, int]:
    """The whole request body and the number of http.request messages."""
    parts = []
    count = 0
    while True:
        msg = await receive()
        assert msg["type"] == "http.request", msg
        count += 1
        parts.append(msg.get("body", b""))
        if not msg.get("more_body", False):
            return b"".join(parts), count


def query(scope) -> dict[str, str]:
    out = {}
    for part in scope["query_string"].decode().split("&"):
        if part:
            k, _, v = part.partition("=")
            out[k] = v
    return out
