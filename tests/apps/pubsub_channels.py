"""PubSubMixin consumers (async and sync) for tests/test_pubsub.py, served by
cdaphne (C fan-out) or by Daphne (the group fallback, on Channels'
in-memory layer).

On connect a consumer says ``{"native": bool}``.  Client text is JSON:
``{"op": "sub"|"unsub", "topic": t}``, ``{"op": "pub", "topic": t, "text": s}``
(or ``"bytes": hex``; ``"exclude_self": bool``), each answered ``{"ack": op}``.
HTTP ``/publish?topic=t&text=s`` calls ``cdaphne.channels.publish()`` from sync code.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import django
from django.conf import settings

if not settings.configured:
    settings.configure(
        CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}},
        INSTALLED_APPS=["channels"],
    )
    django.setup()

from asgiref.sync import sync_to_async  # noqa: E402
from channels.generic.websocket import AsyncWebsocketConsumer, WebsocketConsumer  # noqa: E402
from channels.routing import URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from cdaphne.channels import PubSubMixin, publish  # noqa: E402


def _pub_args(cmd: dict) -> dict:
    if "bytes" in cmd:
        return {
            "bytes": bytes.fromhex(cmd["bytes"]),
            "exclude_self": cmd.get("exclude_self", False),
        }
    return {"text": cmd["text"], "exclude_self": cmd.get("exclude_self", False)}


class AsyncMember(PubSubMixin, AsyncWebsocketConsumer):
    async def connect(self):
        await self.accept()
        await self.send(text_data=json.dumps({"native": self.pubsub_native}))

    async def receive(self, text_data=None, bytes_data=None):
        cmd = json.loads(text_data)
        if cmd["op"] == "sub":
            await self.subscribe(cmd["topic"])
        elif cmd["op"] == "unsub":
            await self.unsubscribe(cmd["topic"])
        else:
            await self.publish(cmd["topic"], **_pub_args(cmd))
        await self.send(text_data=json.dumps({"ack": cmd["op"]}))


class SyncMember(PubSubMixin, WebsocketConsumer):
    def connect(self):
        self.accept()
        self.send(text_data=json.dumps({"native": self.pubsub_native}))

    def receive(self, text_data=None, bytes_data=None):
        cmd = json.loads(text_data)
        if cmd["op"] == "sub":
            self.subscribe(cmd["topic"])
        elif cmd["op"] == "unsub":
            self.unsubscribe(cmd["topic"])
        else:
            self.publish(cmd["topic"], **_pub_args(cmd))
        self.send(text_data=json.dumps({"ack": cmd["op"]}))


_ws = URLRouter([path("async/", AsyncMember.as_asgi()), path("sync/", SyncMember.as_asgi())])


async def application(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            await send({"type": msg["type"] + ".complete"})
            if msg["type"] == "lifespan.shutdown":
                return
    if scope["type"] == "websocket":
        await _ws(scope, receive, send)
    elif scope["type"] == "http":
        # /publish?topic=t&text=s: cdaphne.channels.publish() from sync code,
        # as a view would call it.
        q = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        await sync_to_async(publish)(q["topic"], text=q["text"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
