"""receive() and send() called off the event loop's thread.

asgiref's ``async_to_sync(send)(message)`` (every Channels sync consumer)
calls ``send(message)`` in the sync thread and awaits what it returns on
the loop.  The C send() does its work when called, and that work touches
libuv, which only the loop's thread may do: called off that thread,
receive() and send() return ``deferred(...)`` instead, which calls them
when awaited, on the loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any


async def deferred(now: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Calls ``now(*args)`` when awaited (it raises RuntimeError if that is
    still off the loop's thread) and awaits its result."""
    return await now(*args)
