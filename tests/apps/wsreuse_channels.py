"""Channels consumers for tests/test_receive_reuse.py: a sync
WebsocketConsumer (run through async_to_sync/sync_to_async) and an
AsyncWebsocketConsumer record every text message; on "end" they send back
the list of texts they saw, in order.  Channels' await_many_dispatch
waits on receive() in a task it cancels at the end."""

from __future__ import annotations

import json

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
        CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}},
    )
    django.setup()

from channels.generic.websocket import (  # noqa: E402
    AsyncWebsocketConsumer,
    WebsocketConsumer,
)
from channels.routing import URLRouter  # noqa: E402
from django.urls import path  # noqa: E402


class SyncRecorder(WebsocketConsumer):
    def connect(self) -> None:
        self.seen: list[str] = []
        self.accept()

    def receive(self, text_data=None, bytes_data=None) -> None:
        self.seen.append(text_data)
        if text_data == "end":
            self.send(text_data=json.dumps(self.seen))
            self.close()


class AsyncRecorder(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        self.seen: list[str] = []
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None) -> None:
        self.seen.append(text_data)
        if text_data == "end":
            await self.send(text_data=json.dumps(self.seen))
            await self.close()


app = URLRouter([path("sync", SyncRecorder.as_asgi()), path("async", AsyncRecorder.as_asgi())])
