"""An ASGI 2 (double-callable) application."""

from __future__ import annotations


class App:
    def __init__(self, scope):
        self.scope = scope

    async def __call__(self, receive, send):
        if self.scope["type"] == "lifespan":
            raise ValueError("no lifespan")
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"x-asgi", b"2")]})
        await send({"type": "http.response.body",
                    "body": b"asgi2 " + self.scope["path"].encode() + b" " + body})


def app(scope):
    return App(scope)
