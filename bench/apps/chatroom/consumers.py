"""The chat consumer of the Channels tutorial, reduced to one room and no JSON."""

from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

ROOM = "bench"


class ChatConsumer(AsyncWebsocketConsumer):
    """Joins the room on connect; each message received is sent to the whole room."""

    async def connect(self) -> None:
        await self.channel_layer.group_add(ROOM, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(ROOM, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        await self.channel_layer.group_send(
            ROOM, {"type": "chat.message", "text": text_data, "bytes": bytes_data}
        )

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["text"], bytes_data=event["bytes"])
