"""WebSocket apps for the test suite."""

from __future__ import annotations


async def echo(scope, receive, send):
    """Echo text as text and bytes as bytes (Autobahn's echo endpoint)."""
    if scope["type"] != "websocket":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"websocket only"})
        return
    message = await receive()
    assert message["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    await echo_loop(receive, send)


async def echo_app_extensions(scope, receive, send):
    """Echo, accepting with its own Sec-WebSocket-Extensions field (the
    server negotiates extensions: it must not go out) and another header."""
    if scope["type"] != "websocket":
        return
    await receive()
    headers = [(b"Sec-WebSocket-Extensions", b"permessage-deflate"), (b"x-app", b"kept")]
    await send({"type": "websocket.accept", "headers": headers})
    await echo_loop(receive, send)


async def echo_app_conn_fields(scope, receive, send):
    """Echo, accepting with its own connection, upgrade and
    sec-websocket-accept fields (any case):
    the 101 must keep only the server's, and the app's other header."""
    if scope["type"] != "websocket":
        return
    await receive()
    headers = [
        (b"connection", b"close"),
        (b"Upgrade", b"h2c"),
        (b"CONNECTION", b"keep-alive"),
        (b"Sec-WebSocket-Accept", b"bm90IHRoZSBhY2NlcHQ="),
        (b"x-app", b"kept"),
    ]
    await send({"type": "websocket.accept", "headers": headers})
    await echo_loop(receive, send)


async def echo_app_proto_fields(scope, receive, send):
    """Echo, accepting with the subprotocol named by the query's "key"
    (if any) and one sec-websocket-protocol field per "field" value: the
    101 must carry exactly one subprotocol."""
    if scope["type"] != "websocket":
        return
    await receive()
    from urllib.parse import parse_qs

    query = parse_qs(scope["query_string"].decode())
    headers = [(b"Sec-WebSocket-Protocol", v.encode()) for v in query.get("field", [])]
    msg = {"type": "websocket.accept", "headers": headers + [(b"x-app", b"kept")]}
    if "key" in query:
        msg["subprotocol"] = query["key"][0]
    await send(msg)
    await echo_loop(receive, send)


async def echo_loop(receive, send):
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})
