"""Raw ASGI WebSocket echo: text is echoed as text, bytes as bytes.

It consumes ``websocket.connect`` before accepting. Plain HTTP requests get the
hello-world response, so the same app also answers a readiness probe.
"""

from typing import Any

from hello import app as hello_app


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "websocket":
        await hello_app(scope, receive, send)
        return
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.receive":
            text = message.get("text")
            if text is not None:
                await send({"type": "websocket.send", "text": text})
            else:
                await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
        elif message["type"] == "websocket.disconnect":
            return
