"""A C-native in-memory channel layer, a drop-in for Channels' own.

Switch by changing one line of settings::

    CHANNEL_LAYERS = {
        "default": {"BACKEND": "cdaphne.layers.InMemoryChannelLayer", "CONFIG": {...}},
    }

The CONFIG keys are Channels' (``expiry``, ``group_expiry``, ``capacity``,
``channel_capacity``). The queues, groups, copies and wake-ups live in
``cdaphne._layer``; this module only adapts it to Channels' API. It does not
need the cdaphne server: it works under Daphne, uvicorn or ``asyncio.run``, from
any thread and any event loop.

Differences from ``channels.layers.InMemoryChannelLayer`` (all bug fixes):

- several concurrent ``receive()`` calls on one channel are served in turn;
- a cancelled ``receive()`` never loses a message;
- ``send``/``group_send`` from another thread or event loop wake the receiver;
- expired messages and idle channels are reclaimed by a timer, not only when
  someone reads;
- ``new_channel()`` names come from ``secrets``;
- ``channel_capacity`` patterns work (they match the part of a name up to and
  including ``!``, so one pattern covers every ``new_channel()`` name);
- ``flush()`` keeps pending ``receive()`` calls working.
"""

from __future__ import annotations

import logging
import re
import secrets
from typing import Any

from . import _layer

try:
    from channels.exceptions import ChannelFull
    from channels.layers import BaseChannelLayer
except ImportError:  # Channels is optional: keep the same API without it.
    import fnmatch

    class ChannelFull(Exception):  # type: ignore[no-redef]
        """Raised when a channel cannot be sent to as it is over capacity."""

    class BaseChannelLayer:  # type: ignore[no-redef]
        """The parts of ``channels.layers.BaseChannelLayer`` this layer uses."""

        MAX_NAME_LENGTH = 100
        channel_name_regex = re.compile(r"^[a-zA-Z\d\-_.]+(\![\d\w\-_.]*)?$")
        group_name_regex = re.compile(r"^[a-zA-Z\d\-_.]+$")
        invalid_name_error = (
            "{} name must be a valid unicode string "
            f"with length < {MAX_NAME_LENGTH} "
            "containing only ASCII alphanumerics, hyphens, underscores, or periods."
        )

        def __init__(self, expiry=60, capacity=100, channel_capacity=None):
            self.expiry = expiry
            self.capacity = capacity
            self.channel_capacity = channel_capacity or {}

        def compile_capacities(self, channel_capacity):
            return [
                (p if hasattr(p, "match") else re.compile(fnmatch.translate(p)), v)
                for p, v in channel_capacity.items()
            ]

        def get_capacity(self, channel):
            for pattern, capacity in self.channel_capacity:
                if pattern.match(channel):
                    return capacity
            return self.capacity

        def _valid_name(self, name, regex, kind):
            if not (isinstance(name, str) and len(name) < self.MAX_NAME_LENGTH):
                raise TypeError(self.invalid_name_error.format(kind))
            if not regex.match(name):
                raise TypeError(self.invalid_name_error.format(kind))
            return True

        def require_valid_channel_name(self, name, receive=False):
            self._valid_name(name, self.channel_name_regex, "Channel")
            if "!" in name and not name.endswith("!") and receive:
                raise TypeError("Specific channel names in receive() must end at the !")
            return True

        def require_valid_group_name(self, name):
            return self._valid_name(name, self.group_name_regex, "Group")

        def non_local_name(self, name):
            return name[: name.find("!") + 1] if "!" in name else name


try:
    from inspect import markcoroutinefunction as _mark
except ImportError:  # Python 3.11
    try:
        from asgiref.sync import markcoroutinefunction as _mark
    except ImportError:  # pragma: no cover - asgiref is a dependency

        def _mark(func):
            return func


__all__ = ["ChannelFull", "InMemoryChannelLayer"]

logger = logging.getLogger(__name__)


class InMemoryChannelLayer(BaseChannelLayer):
    """In-memory channel layer for one process, backed by ``cdaphne._layer``."""

    extensions = ["groups", "flush"]

    def __init__(
        self,
        expiry: float = 60,
        group_expiry: float = 86400,
        capacity: int = 100,
        channel_capacity: dict[Any, int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            expiry=expiry, capacity=capacity, channel_capacity=channel_capacity, **kwargs
        )
        # Channels' in-memory layer forgets to compile the patterns (its first
        # send() then crashes); compile them as its Redis layer does.
        self.channel_capacity = self.compile_capacities(channel_capacity or {})
        self.group_expiry = group_expiry
        self._core = _layer.Core(
            expiry=float(expiry),
            group_expiry=float(group_expiry),
            capacity=int(capacity),
            capacity_for=self.get_capacity if self.channel_capacity else None,
            channel_full=ChannelFull,
            check_channel=self.require_valid_channel_name,
            check_group=self.require_valid_group_name,
        )
        self._core_send = self._core.send
        self._core_receive = self._core.receive

    # Channel layer API

    async def send(self, channel: str, message: dict) -> None:
        """Send a copy of message to channel; raise ChannelFull if it is full."""
        self._core_send(channel, message)

    @_mark
    def receive(self, channel: str):
        """Await the next message on channel (FIFO, one waiter served per message).

        Returns a C awaitable: it completes without a loop round trip when a
        message is already queued.
        """
        return self._core_receive(channel)

    async def new_channel(self, prefix: str = "specific.") -> str:
        """A new unique, process-local channel name (random from ``secrets``)."""
        return f"{prefix}.inmemory!{secrets.token_hex(12)}"

    # Groups extension

    async def group_add(self, group: str, channel: str) -> None:
        self._core.group_add(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        self._core.group_discard(group, channel)

    async def group_send(self, group: str, message: dict) -> None:
        """Send a copy of message to every member; full members miss it silently."""
        dropped = self._core.group_send(group, message)
        if dropped is not None:
            logger.info(
                "%s of %s channels over capacity in group %s", dropped[0], dropped[1], group
            )

    # Flush extension

    async def flush(self) -> None:
        self._core.flush()

    async def close(self) -> None:
        self._core.close()

    # Introspection (what Channels' tests peek at), as snapshots.

    @property
    def channels(self) -> dict[str, tuple[int, int]]:
        """``{name: (queued messages, waiting receivers)}`` of busy channels."""
        return self._core.debug_channels()

    @property
    def groups(self) -> dict[str, list[str]]:
        """``{group: [channel, ...]}``."""
        return self._core.debug_groups()

    def stats(self) -> dict[str, Any]:
        """Counters of live channels, groups, messages, waiters, memberships."""
        return self._core.stats()

    def sweep(self) -> None:
        """Reclaim expired messages, memberships and idle channels now."""
        self._core.sweep()
