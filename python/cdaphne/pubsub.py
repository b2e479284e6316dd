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

import time

from . import _cdaphne

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
    if (text is None) == (bytes is None):
        raise TypeError("publish() takes exactly one of text= or bytes=")
    data = text if text is not None else bytes
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
