"""The chat room on cdaphne.pubsub (the cdaphne-pubsub entry; imports cdaphne)."""

from channels.generic.websocket import AsyncWebsocketConsumer

from cdaphne.channels import PubSubMixin

from .consumers import ROOM


class PubSubChatConsumer(PubSubMixin, AsyncWebsocketConsumer):
    """The same room on cdaphne.pubsub: the server writes each message to every
    member's socket in C (elsewhere the mixin falls back to the group above)."""

    async def connect(self) -> None:
        await self.accept()
        await self.subscribe(ROOM)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is not None:
            await self.publish(ROOM, text=text_data)
        else:
            await self.publish(ROOM, bytes=bytes_data)
