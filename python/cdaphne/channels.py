"""Topics for Channels consumers: cdaphne's C fan-out, or groups elsewhere.

``PubSubMixin`` goes before ``AsyncWebsocketConsumer`` or
``WebsocketConsumer`` in the bases and adds::

    subscribe(topic)                    # after accept()
    unsubscribe(topic)
    publish(topic, text=..., bytes=..., exclude_self=False)

(coroutines on an async consumer, plain calls on a sync one).  Under cdaphne
(``"cdaphne.pubsub"`` in the scope's extensions) these are
``cdaphne.pubsub.*`` messages: a published frame is built once and written
to every subscriber's socket in C, without waking their consumers.
Anywhere else (Daphne in tests, uvicorn) they fall back to ``group_add``,
``group_discard`` and ``group_send`` with a handler that sends the text or
bytes on, so the same consumer works everywhere.  Topic names follow
Channels' group-name rules, and a disconnect leaves every topic.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from channels.consumer import SyncConsumer

from . import pubsub as _pubsub

# The group message the fallback sends (handled by cdaphne_pubsub_message).
FALLBACK_TYPE = "cdaphne.pubsub.message"

__all__ = ["FALLBACK_TYPE", "PubSubMixin", "publish"]


class PubSubMixin:
    """Topics for a WebSocket consumer: see the module docstring."""

    scope: dict[str, Any]
    channel_layer: Any
    channel_name: str
    base_send: Any

    # ---- helpers ------------------------------------------------------
    @property
    def pubsub_native(self) -> bool:
        """Whether the server fans out in C (cdaphne), not through groups."""
        return _pubsub.available(self.scope)

    def _pubsub_topics(self) -> set[str]:
        topics = self.__dict__.get("_pubsub_joined")
        if topics is None:
            topics = self.__dict__["_pubsub_joined"] = set()
        return topics

    def _pubsub_is_sync(self) -> bool:
        return isinstance(self, SyncConsumer)

    def _pubsub_run(self, coro_fn: Any, *args: Any) -> Any:
        """A coroutine for async consumers; run to completion for sync ones."""
        if self._pubsub_is_sync():
            return async_to_sync(coro_fn)(*args)
        return coro_fn(*args)

    # ---- the API -------------------------------------------------------
    def subscribe(self, topic: str) -> Any:
        return self._pubsub_run(self._pubsub_subscribe, topic)

    def unsubscribe(self, topic: str) -> Any:
        return self._pubsub_run(self._pubsub_unsubscribe, topic)

    def publish(
        self,
        topic: str,
        text: str | None = None,
        bytes: bytes | None = None,  # noqa: A002
        exclude_self: bool = False,
    ) -> Any:
        return self._pubsub_run(self._pubsub_publish, topic, text, bytes, exclude_self)

    # ---- async implementations ----------------------------------------
    async def _pubsub_base_send(self, message: dict) -> None:
        # A sync consumer's base_send is already async_to_sync(send): call
        # the server's send itself from here, on the loop.
        send = getattr(self.base_send, "awaitable", None) or self.base_send
        await send(message)

    async def _pubsub_subscribe(self, topic: str) -> None:
        if self.pubsub_native:
            await self._pubsub_base_send({"type": "cdaphne.pubsub.subscribe", "topic": topic})
        else:
            await self.channel_layer.group_add(topic, self.channel_name)
        self._pubsub_topics().add(topic)

    async def _pubsub_unsubscribe(self, topic: str) -> None:
        if self.pubsub_native:
            await self._pubsub_base_send({"type": "cdaphne.pubsub.unsubscribe", "topic": topic})
        else:
            await self.channel_layer.group_discard(topic, self.channel_name)
        self._pubsub_topics().discard(topic)

    async def _pubsub_publish(
        self, topic: str, text: str | None, data: bytes | None, exclude_self: bool
    ) -> None:
        if (text is None) == (data is None):
            raise TypeError("publish() takes exactly one of text= or bytes=")
        if self.pubsub_native:
            msg: dict[str, Any] = {
                "type": "cdaphne.pubsub.publish",
                "topic": topic,
                "exclude_self": exclude_self,
            }
            msg["text" if text is not None else "bytes"] = text if text is not None else data
            await self._pubsub_base_send(msg)
            return
        event: dict[str, Any] = {"type": FALLBACK_TYPE}
        if text is not None:
            event["text"] = text
        else:
            event["bytes"] = data
        if exclude_self:
            event["sender"] = self.channel_name
        await self.channel_layer.group_send(topic, event)

    async def _pubsub_leave_all(self) -> None:
        if not self.pubsub_native:  # The server drops native ones itself.
            for topic in list(self._pubsub_topics()):
                await self.channel_layer.group_discard(topic, self.channel_name)
        self._pubsub_topics().clear()

    # ---- consumer hooks -------------------------------------------------
    def cdaphne_pubsub_message(self, event: dict) -> Any:
        """The fallback's group message: send its text or bytes on."""
        if event.get("sender") is not None and event["sender"] == self.channel_name:
            return None if self._pubsub_is_sync() else _noop()
        kwargs = {"text_data": event["text"]} if "text" in event else {"bytes_data": event["bytes"]}
        return self.send(**kwargs)  # type: ignore[attr-defined]

    def websocket_disconnect(self, message: dict) -> Any:
        if self._pubsub_is_sync():
            async_to_sync(self._pubsub_leave_all)()
            return super().websocket_disconnect(message)  # type: ignore[misc]
        return self._pubsub_async_disconnect(message)

    async def _pubsub_async_disconnect(self, message: dict) -> None:
        await self._pubsub_leave_all()
        await super().websocket_disconnect(message)  # type: ignore[misc]


async def _noop() -> None:
    return None


def publish(
    topic: str,
    text: str | None = None,
    bytes: bytes | None = None,  # noqa: A002
    layer: str = "default",
) -> None:
    """Publish from code without a consumer (a view, a thread, a command).

    Under cdaphne this is :func:`cdaphne.pubsub.publish`; elsewhere a
    ``group_send`` on the channel layer `layer` that PubSubMixin consumers
    of the fallback turn into a send.  Call it from sync code.
    """
    if _pubsub.running():
        _pubsub.publish(topic, text=text, bytes=bytes)
        return
    from channels.layers import get_channel_layer

    event: dict[str, Any] = {"type": FALLBACK_TYPE}
    if text is not None:
        event["text"] = text
    else:
        event["bytes"] = bytes
    async_to_sync(get_channel_layer(layer).group_send)(topic, event)
