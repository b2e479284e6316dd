"""The seed-style Channels room consumer, for tests/test_ws_memory.py:
an AsyncWebsocketConsumer that joins one group on connect, on Channels'
own InMemoryChannelLayer (WSROOM_LAYER picks another layer class).  Each
text message goes to the whole room.  HTTP: 200 "ok"."""

from __future__ import annotations

import os

import django
from django.conf import settings

if not settings.configured:
    settings.configure(
        SECRET_KEY="tests-only",
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        INSTALLED_APPS=["channels"],
        DATABASES={},
        USE_TZ=True,
        LOGGING_CONFIG=None,
        CHANNEL_LAYERS={
            "default": {
                "BACKEND": os.environ.get("WSROOM_LAYER", "channels.layers.InMemoryChannelLayer"),
                "CONFIG": {"capacity": 1000, "expiry": 60},
            }
        },
    )
    django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

ROOM = "room"


class Room(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.channel_layer.group_add(ROOM, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(ROOM, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None) -> None:
        await self.channel_layer.group_send(ROOM, {"type": "chat.message", "text": text_data})

    async def chat_message(self, event) -> None:
        await self.send(text_data=event["text"])


websocket_app = URLRouter([path("", Room.as_asgi())])


async def app(scope, receive, send):
    if scope["type"] == "websocket":
        await websocket_app(scope, receive, send)
        return
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            await send({"type": msg["type"] + ".complete"})
            if msg["type"] == "lifespan.shutdown":
                return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"ok"})
