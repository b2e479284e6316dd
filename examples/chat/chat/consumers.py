"""The chat's consumers.

- ``ChatConsumer`` (async) at ``ws/chat/<room>/`` and ``SyncChatConsumer``
  (sync, through ``async_to_sync``) at ``ws/chat-sync/<room>/`` share the group
  ``chat_<room>``: clients of both variants in one room see each other.
  A client sends ``{"message": "..."}``; everyone in the room receives
  ``{"message": "...", "user": "<username or anonymous>"}``.
- ``PubSubChatConsumer`` (async) at ``ws/pubsub-chat/<room>/`` and
  ``SyncPubSubChatConsumer`` at ``ws/pubsub-chat-sync/<room>/``: the same room
  on ``cdaphne.channels.PubSubMixin``.  Under cdaphne a message is written to
  every member's socket in C, without waking their consumers; under Daphne or
  uvicorn the mixin falls back to the channel layer's groups.  These rooms are
  the topics ``pubsub_<room>``, apart from the group rooms above.
- ``WhoAmIConsumer`` (``JsonWebsocketConsumer``) at ``ws/whoami/`` tells what the
  session and auth middleware put in the scope.
- ``EventsConsumer`` (``AsyncHttpConsumer``) at ``/events/`` streams server-sent
  events: ``?room=<room>`` relays that room's messages until the client leaves;
  otherwise ``count`` clock ticks (default 10), ``interval`` seconds apart.
"""

import asyncio
import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from asgiref.sync import async_to_sync
from channels.exceptions import StopConsumer
from channels.generic.http import AsyncHttpConsumer
from channels.generic.websocket import (
    AsyncWebsocketConsumer,
    JsonWebsocketConsumer,
    WebsocketConsumer,
)

from cdaphne.channels import PubSubMixin


def room_group(room_name: str) -> str:
    return f"chat_{room_name}"


def display_name(scope: dict[str, Any]) -> str:
    user = scope.get("user")
    if user is not None and user.is_authenticated:
        return str(user.get_username())
    return "anonymous"


def parse_message(text_data: str | None) -> str | None:
    """The ``message`` string of a client frame, or None if it has none."""
    try:
        message = json.loads(text_data or "")["message"]
    except (ValueError, KeyError, TypeError):
        return None
    return message if isinstance(message, str) else None


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        self.room_name = self.scope["url_route"]["kwargs"]["room_name"]
        self.room_group_name = room_group(self.room_name)
        await self.channel_layer.group_add(self.room_group_name, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(self.room_group_name, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        message = parse_message(text_data)
        if message is None:
            await self.send(text_data=json.dumps({"error": 'expected {"message": "..."}'}))
            return
        await self.channel_layer.group_send(
            self.room_group_name,
            {"type": "chat.message", "message": message, "user": display_name(self.scope)},
        )

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps({"message": event["message"], "user": event["user"]}))


class SyncChatConsumer(WebsocketConsumer):
    def connect(self) -> None:
        self.room_name = self.scope["url_route"]["kwargs"]["room_name"]
        self.room_group_name = room_group(self.room_name)
        async_to_sync(self.channel_layer.group_add)(self.room_group_name, self.channel_name)
        self.accept()

    def disconnect(self, code: int) -> None:
        async_to_sync(self.channel_layer.group_discard)(self.room_group_name, self.channel_name)

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        message = parse_message(text_data)
        if message is None:
            self.send(text_data=json.dumps({"error": 'expected {"message": "..."}'}))
            return
        async_to_sync(self.channel_layer.group_send)(
            self.room_group_name,
            {"type": "chat.message", "message": message, "user": display_name(self.scope)},
        )

    def chat_message(self, event: dict[str, Any]) -> None:
        self.send(text_data=json.dumps({"message": event["message"], "user": event["user"]}))


def room_topic(room_name: str) -> str:
    return f"pubsub_{room_name}"


class PubSubChatConsumer(PubSubMixin, AsyncWebsocketConsumer):
    """ChatConsumer on topics: subscribe() after accept(), publish() the
    finished frame; no disconnect() and no chat_message() needed."""

    async def connect(self) -> None:
        self.room_topic = room_topic(self.scope["url_route"]["kwargs"]["room_name"])
        await self.accept()
        await self.subscribe(self.room_topic)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        message = parse_message(text_data)
        if message is None:
            await self.send(text_data=json.dumps({"error": 'expected {"message": "..."}'}))
            return
        data = {"message": message, "user": display_name(self.scope)}
        await self.publish(self.room_topic, text=json.dumps(data))


class SyncPubSubChatConsumer(PubSubMixin, WebsocketConsumer):
    def connect(self) -> None:
        self.room_topic = room_topic(self.scope["url_route"]["kwargs"]["room_name"])
        self.accept()
        self.subscribe(self.room_topic)

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        message = parse_message(text_data)
        if message is None:
            self.send(text_data=json.dumps({"error": 'expected {"message": "..."}'}))
            return
        data = {"message": message, "user": display_name(self.scope)}
        self.publish(self.room_topic, text=json.dumps(data))


class WhoAmIConsumer(JsonWebsocketConsumer):
    def connect(self) -> None:
        self.accept()
        session = self.scope.get("session")
        user = self.scope.get("user")
        self.send_json(
            {
                "user": display_name(self.scope),
                "authenticated": bool(user is not None and user.is_authenticated),
                "has_session": bool(session is not None and session.session_key),
                "path": self.scope["path"],
                "root_path": self.scope.get("root_path", ""),
            }
        )

    def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "ping":
            self.send_json({"type": "pong"})
        else:
            self.send_json({"echo": content})


class EventsConsumer(AsyncHttpConsumer):
    room_group_name: str | None = None

    async def handle(self, body: bytes) -> None:
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        await self.send_headers(
            headers=[
                (b"Content-Type", b"text/event-stream; charset=utf-8"),
                (b"Cache-Control", b"no-cache"),
                (b"X-Accel-Buffering", b"no"),
            ]
        )
        # A comment line makes the server send the headers now.
        await self.send_body(b": stream opened\n\n", more_body=True)
        room = query.get("room", [""])[0]
        if room:
            self.room_group_name = room_group(room)
            await self.channel_layer.group_add(self.room_group_name, self.channel_name)
            return
        count = min(max(int(query.get("count", ["10"])[0] or 10), 1), 1000)
        interval = min(max(float(query.get("interval", ["1"])[0] or 1), 0.0), 60.0)
        for i in range(count):
            if i:
                await asyncio.sleep(interval)
            now = datetime.now(UTC).isoformat()
            payload = f"id: {i}\nevent: tick\ndata: {now}\n\n"
            await self.send_body(payload.encode(), more_body=True)
        await self.send_body(b"")

    async def http_request(self, message: dict[str, Any]) -> None:
        # Unlike the base class, stay subscribed after handle() when a room is
        # followed: the stream ends when the client goes away.
        self.body.append(message.get("body", b""))
        if message.get("more_body"):
            return
        try:
            await self.handle(b"".join(self.body))
        except ValueError:
            await self.send_body(b"event: error\ndata: bad query\n\n")
        if self.room_group_name is None:
            await self.disconnect()
            raise StopConsumer()

    async def chat_message(self, event: dict[str, Any]) -> None:
        data = json.dumps({"message": event["message"], "user": event["user"]})
        await self.send_body(f"event: message\ndata: {data}\n\n".encode(), more_body=True)

    async def disconnect(self) -> None:
        if self.room_group_name is not None:
            await self.channel_layer.group_discard(self.room_group_name, self.channel_name)
