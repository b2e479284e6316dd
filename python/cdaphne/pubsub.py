"""cdaphne.pubsub: broadcast to WebSocket subscribers, fanned out in C.

Inside an ASGI app running under cdaphne (``"cdaphne.pubsub"`` in
``scope["extensions"]``), send these messages:

    {"type": "cdaphne.pubsub.subscribe", "topic": "room.lobby"}
    {"type": "cdaphne.pubsub.unsubscribe", "topic": "room.lobby"}
    {"type": "cdaphne.pubsub.publish", "topic": "room.lobby",
     "text": "hi"}              # or "bytes": b"...", "exclude_self": True

Subscribing needs an accepted WebSocket; publishing works from any scope.
From code that has no ``send`` (a sync view, a thread), call
:func:`publish`.  The frame is built once and written to every local
subscriber; with ``--workers`` it reaches the other workers through the
supervisor, and with ``--pubsub-redis`` other servers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from . import _cdaphne

logger = logging.getLogger("cdaphne")

EXTENSION = "cdaphne.pubsub"

__all__ = ["EXTENSION", "available", "publish", "running", "stats"]


def available(scope: dict) -> bool:
    """Whether the server offers cdaphne.pubsub for this scope."""
    return EXTENSION in (scope.get("extensions") or {})


def publish(topic: str, text: str | None = None, bytes: bytes | None = None) -> None:  # noqa: A002
    """Send text or bytes to every subscriber of topic, from any thread.

    On the server's loop thread the message goes out at once; from another
    thread it is handed to the loop, in order.  When the loop has too much
    from other threads waiting, this waits for it (backpressure).
    """
    data = text if text is not None else bytes
    if data is None or (text is not None and bytes is not None):
        raise TypeError("publish() takes exactly one of text= or bytes=")
    delay = 0.0005
    while not _cdaphne.pubsub_publish(topic, data, text is not None):
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def stats() -> dict[str, int]:
    """Counters of this process: running, topics, subscriptions, published,
    delivered, slow_closed."""
    return _cdaphne.pubsub_stats()


def running() -> bool:
    """Whether a cdaphne server runs in this process (publish() works)."""
    return bool(_cdaphne.pubsub_stats()["running"])


# ---- across workers and hosts ----------------------------------------------
#
# The C core calls two hooks on the loop thread: on_topic(topic, subscribed)
# when a topic gains its first or loses its last local subscriber, and
# forward(topic, data, is_text) after each local publish.  Messages that
# come back in are fanned out with forward=False, so nothing loops.

BUS_TAG = b"\x00cdaphne.pubsub"  # Not a valid layer alias: no clash.
REDIS_PREFIX = "cdaphne.pubsub:"


class _BusLink:
    """--workers: the supervisor's hub (supervisors/bus.py) relays a publish
    to the workers that have subscribers for its topic, in order."""

    def __init__(self, bus: Any) -> None:
        self.bus = bus
        bus.register(BUS_TAG, self)

    def on_topic(self, topic: str, subscribed: bool) -> None:
        from .supervisors import bus as _bus

        self.bus.publish(_bus.SUB if subscribed else _bus.UNSUB, BUS_TAG, topic)

    def forward(self, topic: str, data: str | bytes, is_text: bool) -> None:
        from .supervisors import bus as _bus

        self.bus.publish(_bus.GSEND, BUS_TAG, topic, (is_text, data))

    # Called by WorkerBus for GSEND frames under our tag.
    def _bus_deliver_group(self, topic: str, message: tuple[bool, str | bytes]) -> None:
        is_text, data = message
        _cdaphne.pubsub_publish(topic, data, is_text, False)

    async def close(self) -> None:
        self.bus.layers.pop(BUS_TAG, None)


class _RedisLink:
    """--pubsub-redis: every server publishes to the Redis channel
    ``cdaphne.pubsub:<topic>`` and listens on the pattern ``cdaphne.pubsub:*``.
    A message carries its origin (this process), which skips its own; one
    writer task keeps each publisher's order."""

    def __init__(self, url: str, max_queue: int) -> None:
        self.url = url
        self.origin = os.urandom(8)
        # Bounded (--pubsub-redis-max-queue, 0: not): while Redis is
        # unreachable, newer messages are dropped (and counted) rather than
        # piling up.
        self.queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(max_queue)
        self.dropped = 0
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        import redis.asyncio as aioredis

        self.client = aioredis.Redis.from_url(self.url)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        await self.pubsub.psubscribe(REDIS_PREFIX + "*")
        self.tasks = [asyncio.ensure_future(self._writer()), asyncio.ensure_future(self._reader())]

    def on_topic(self, topic: str, subscribed: bool) -> None:
        pass  # One pattern subscription covers every topic.

    def forward(self, topic: str, data: str | bytes, is_text: bool) -> None:
        raw = data.encode() if isinstance(data, str) else bytes(data)
        kind = b"t" if is_text else b"b"
        try:
            self.queue.put_nowait((REDIS_PREFIX + topic, self.origin + kind + raw))
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10000 == 0:
                logger.warning("cdaphne.pubsub: Redis is behind (%d messages waiting, "
                               "--pubsub-redis-max-queue); %d messages dropped",
                               self.queue.maxsize, self.dropped)

    async def _writer(self) -> None:
        while True:
            channel, payload = await self.queue.get()
            try:
                await self.client.publish(channel, payload)
            except Exception:
                logger.exception("cdaphne.pubsub: cannot publish to Redis")

    async def _reader(self) -> None:
        while True:
            try:
                msg = await self.pubsub.get_message(timeout=None)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("cdaphne.pubsub: Redis subscription failed; retrying")
                await asyncio.sleep(1)
                continue
            if msg is None or msg.get("type") != "pmessage":
                continue
            payload = msg["data"]
            if payload[:8] == self.origin:
                continue
            channel = msg["channel"].decode()
            topic = channel[len(REDIS_PREFIX) :]
            data: str | bytes = payload[9:]
            is_text = payload[8:9] == b"t"
            if is_text:
                data = payload[9:].decode()
            try:
                _cdaphne.pubsub_publish(topic, data, is_text, False)
            except Exception:
                logger.exception("cdaphne.pubsub: bad message from Redis on %r", channel)

    async def close(self) -> None:
        deadline = asyncio.get_running_loop().time() + 2.0
        while not self.queue.empty() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)  # What was published before the stop.
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.pubsub.aclose()
        await self.client.aclose()


async def start_links(config: Any) -> Any:
    """Install the hooks that carry messages beyond this process (server.py)."""
    link: Any = None
    if getattr(config, "pubsub_redis", None):
        link = _RedisLink(config.pubsub_redis, config.pubsub_redis_max_queue)
        await link.start()
    else:
        from .supervisors import bus as _bus

        if _bus.current is not None:
            link = _BusLink(_bus.current)
    if link is not None:
        _cdaphne.pubsub_set_hooks(link.forward, link.on_topic)
    return link


async def stop_links(link: Any) -> None:
    if link is not None:
        _cdaphne.pubsub_set_hooks(None, None)
        await link.close()
