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

Under ``cdaphne --workers N`` the layer spans the workers, with no Redis: the
supervisor relays ``group_send`` to the other workers that have members in
the group, and ``send`` to a ``new_channel()`` name of another worker (the
name carries its worker's pid); local members are served in-process as
above. A ``send`` to another worker's channel waits for that worker's
answer, so a full channel raises ``ChannelFull`` in the sender as with one
process; ``flush()`` empties every worker. Limits: plain channel names (no
``!``) and ``!`` names not made by ``new_channel()`` stay per worker;
messages must pickle. Across hosts, use ``channels_redis``.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import sys
import time
from typing import Any

from . import _layer
from .supervisors import bus as _bus

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


if sys.version_info >= (3, 12):
    from inspect import markcoroutinefunction as _mark
else:  # asgiref (a dependency) has it from 3.7
    from asgiref.sync import markcoroutinefunction as _mark


__all__ = ["ChannelFull", "InMemoryChannelLayer"]

logger = logging.getLogger(__name__)
_instances = itertools.count()
# Seconds between checks that this worker still has members in the groups
# it told the supervisor about (under `cdaphne --workers`).
_RESYNC = 10.0


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
        # Under `cdaphne --workers`: the supervisor's bus (see
        # cdaphne.supervisors.bus) carries group_send and sends to other
        # workers' channels; everything local stays in the core.
        self._index = next(_instances)
        self._tag: bytes | None = None
        self._subs: set[str] = set()
        self._resync_at = 0.0

    # Channel layer API

    async def send(self, channel: str, message: dict) -> None:
        """Send a copy of message to channel; raise ChannelFull if it is full.

        Under ``cdaphne --workers``, a channel of another worker gets the
        message through the supervisor and that worker answers: the same
        capacity and expiry apply there, and a full channel raises
        ChannelFull here.
        """
        bus = _bus.current
        if bus is not None:
            pid = _bus.owner_pid(channel) if "!" in channel else None
            if pid is not None and pid != bus.pid:
                self.require_valid_channel_name(channel)
                if not isinstance(message, dict):
                    raise AssertionError("message is not a dict")
                answer = bus.request(_bus.SEND, self._bus_tag(bus), channel, message)
                if await answer == _bus.FULL:
                    raise ChannelFull(channel)
                return
        self._core_send(channel, message)

    @_mark
    def receive(self, channel: str):
        """Await the next message on channel (FIFO, one waiter served per message).

        Returns a C awaitable: it completes without a loop round trip when a
        message is already queued.
        """
        return self._core_receive(channel)

    async def new_channel(self, prefix: str = "specific.") -> str:
        """A new unique, process-local channel name (random from ``secrets``).

        Under ``cdaphne --workers`` the name also says which worker owns it.
        """
        bus = _bus.current
        if bus is not None:
            self._bus_tag(bus)
            return f"{prefix}.inmemory!w{bus.pid}.{secrets.token_hex(12)}"
        return f"{prefix}.inmemory!{secrets.token_hex(12)}"

    # Groups extension

    async def group_add(self, group: str, channel: str) -> None:
        self._core.group_add(group, channel)
        bus = _bus.current
        if bus is not None and group not in self._subs:
            self._subs.add(group)
            bus.publish(_bus.SUB, self._bus_tag(bus), group)

    async def group_discard(self, group: str, channel: str) -> None:
        self._core.group_discard(group, channel)

    async def group_send(self, group: str, message: dict) -> None:
        """Send a copy of message to every member; full members miss it silently."""
        dropped = self._core.group_send(group, message)
        if dropped is not None:
            logger.info(
                "%s of %s channels over capacity in group %s", dropped[0], dropped[1], group
            )
        bus = _bus.current
        if bus is not None:
            bus.publish(_bus.GSEND, self._bus_tag(bus), group, message)

    # Flush extension

    async def flush(self) -> None:
        """Empty every channel and group (of every worker under ``--workers``)."""
        self._core.flush()
        bus = _bus.current
        if bus is not None:
            self._bus_unsubscribe_all(bus)
            await bus.request(_bus.FLUSH, self._bus_tag(bus), "")

    # Under `cdaphne --workers` (called by cdaphne.supervisors.bus)

    def _bus_tag(self, bus: _bus.WorkerBus) -> bytes:
        """The name every worker knows this layer by: its Channels alias."""
        if self._tag is None:
            tag = f"#{self._index}"
            try:
                from channels.layers import channel_layers
            except ImportError:
                pass
            else:
                for alias, backend in list(channel_layers.backends.items()):
                    if backend is self:
                        tag = alias
                        break
            self._tag = tag.encode()
            bus.register(self._tag, self)
        return self._tag

    def _bus_deliver(self, channel: str, message: dict) -> int:
        """A send() from another worker: OK, or FULL for it to raise."""
        try:
            self._core_send(channel, message)
        except ChannelFull:
            return _bus.FULL
        return _bus.OK

    def _bus_flush(self) -> None:
        """A flush() from another worker."""
        self._core.flush()
        bus = _bus.current
        if bus is not None:
            self._bus_unsubscribe_all(bus)

    def _bus_unsubscribe_all(self, bus: _bus.WorkerBus) -> None:
        for group in self._subs:
            bus.publish(_bus.UNSUB, self._bus_tag(bus), group)
        self._subs.clear()

    def _bus_deliver_group(self, group: str, message: dict) -> None:
        dropped = self._core.group_send(group, message)
        if dropped is not None:
            logger.info(
                "%s of %s channels over capacity in group %s", dropped[0], dropped[1], group
            )
        now = time.monotonic()
        if now >= self._resync_at:
            # Memberships expire and are discarded without a word to the
            # supervisor: drop the subscriptions with no member left.
            self._resync_at = now + _RESYNC
            bus = _bus.current
            live = self._core.debug_groups()
            for gone in [g for g in self._subs if g not in live]:
                self._subs.discard(gone)
                if bus is not None:
                    bus.publish(_bus.UNSUB, self._bus_tag(bus), gone)

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
