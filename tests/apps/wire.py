"""Apps that drive the response head writer and the 101 handshake writer
with unusual inputs (long server names, odd statuses, hostile header
sequences).  Driven by the query string (conn: a connection field,
%-decoded; delay: seconds before the response); see
tests/test_head_writer.py."""

from __future__ import annotations

import asyncio
from urllib.parse import unquote

from .common import query


class ShiftyPair:
    """A (name, value) pair whose items change between reads: short bytes
    the first time, 100 KB (or a non-bytes object) on later reads."""

    def __init__(self, later: object) -> None:
        self.reads = 0
        self.later = later

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> object:
        if i not in (0, 1):
            raise IndexError(i)
        self.reads += 1
        if self.reads <= 2:
            return (b"x-shift", b"short")[i]
        return self.later if i == 1 else b"x-shift"


class ShiftyList:
    """A header sequence whose items change between reads, as above."""

    def __init__(self, later: object) -> None:
        self.pair = ShiftyPair(later)

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> object:
        if i != 0:
            raise IndexError(i)
        return self.pair


def accept_message(mode: str) -> dict:
    msg: dict = {"type": "websocket.accept"}
    if mode == "plain":
        msg["headers"] = [(b"x-plain", b"1")]
    elif mode == "shifty_long":
        msg["headers"] = ShiftyList(b"L" * 100_000)
    elif mode == "shifty_nonbytes":
        msg["headers"] = ShiftyList(12345)
    elif mode == "nonbytes":
        msg["headers"] = [(b"x-a", "not bytes")]
    elif mode == "crlf_value":
        msg["headers"] = [(b"x-a", b"v\r\nx-injected: 1")]
    elif mode == "nul_value":
        msg["headers"] = [(b"x-a", b"v\x00x-injected: 1")]
    elif mode == "crlf_subprotocol":
        msg["subprotocol"] = "chat\r\nx-injected: 1"
    elif mode == "bytes_subprotocol":
        msg["subprotocol"] = b"chat"
    elif mode == "bad_name":
        msg["headers"] = [(b"x-injected: 1\r\nx-a", b"v")]
    elif mode == "app_server":
        msg["headers"] = [(b"server", b"app-server")]
    return msg


async def websocket(scope, receive, send):
    msg = await receive()
    assert msg["type"] == "websocket.connect"
    await send(accept_message(query(scope).get("mode", "plain")))
    msg = await receive()
    if msg["type"] == "websocket.receive":
        await send({"type": "websocket.send", "text": msg.get("text") or "?"})
        reason = {"bytes": b"bye", "int": 7}.get(query(scope).get("reason", ""), "bye")
        await send({"type": "websocket.close", "reason": reason})


async def app(scope, receive, send):
    if scope["type"] == "websocket":
        await websocket(scope, receive, send)
        return
    if scope["type"] != "http":
        raise RuntimeError("http and websocket only")
    q = query(scope)
    status = int(q.get("status", "200"))
    headers = []
    if "close" in q:
        headers.append((b"connection", b"close"))
    if "conn" in q:
        headers.append((b"connection", unquote(q["conn"]).encode()))
    body = b"b" * int(q.get("len", "5"))
    while True:
        msg = await receive()
        if not msg.get("more_body"):
            break
    if "delay" in q:
        await asyncio.sleep(float(q["delay"]))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if "stream" in q:
        await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    else:
        await send({"type": "http.response.body", "body": body})
