"""Apps for the lifespan protocol."""

from __future__ import annotations

import asyncio
import json
import os

from .common import jsonable, send_json

EVENTS: list[str] = []


def _marker(text: str) -> None:
    # Shutdown happens after the last request: tests read this file.
    path = os.environ.get("CDAPHNE_TEST_MARKER")
    if path:
        with open(path, "a") as f:
            f.write(text + "\n")


async def with_state(scope, receive, send):
    """Stores state at startup; requests report their scope's state."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                scope["state"]["db"] = "connected"
                scope["state"]["counter"] = 0
                EVENTS.append("startup")
                _marker("startup")
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                EVENTS.append("shutdown")
                _marker("shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return
    await report_state(scope, receive, send, {"events": EVENTS})


async def report_state(scope, receive, send, extra: dict | None = None) -> None:
    """An HTTP response or a WebSocket's one message: the scope's state
    (its counter bumped first) and whether it has one."""
    state = scope.get("state")
    if state is not None:
        # Each request gets a shallow copy: this must not leak to the next.
        state["counter"] = state.get("counter", 0) + 1
    data = {"state": jsonable(state), "has_state": "state" in scope, **(extra or {})}
    if scope["type"] == "http":
        await send_json(send, data)
        return
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": json.dumps(data)})
    await send({"type": "websocket.close"})


async def raises_on_lifespan(scope, receive, send):
    """Channels' ProtocolTypeRouter shape: unknown scope types raise."""
    if scope["type"] not in ("http", "websocket"):
        raise ValueError(f"No application configured for scope type {scope['type']!r}")
    await report_state(scope, receive, send)


async def startup_fails(scope, receive, send):
    if scope["type"] == "lifespan":
        msg = await receive()
        assert msg["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.failed", "message": "database is down"})
        return
    await send_json(send, {})


async def startup_raises(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        raise RuntimeError("cannot connect to the database")
    await send_json(send, {})


async def slow_startup(scope, receive, send):
    """Startup that never finishes: the marker says it began and whether it
    was cancelled (its cleanup ran)."""
    if scope["type"] == "lifespan":
        await receive()
        _marker("starting")
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            _marker("cancelled")
            raise
        await send({"type": "lifespan.startup.complete"})
        return
    await send_json(send, {})


async def startup_fails_silently(scope, receive, send):
    """lifespan.startup.failed without its optional message."""
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed"})
        return
    await send_json(send, {})


async def slow_cleanup(scope, receive, send):
    """An HTTP request that never answers and, cancelled, cleans up for
    CDAPHNE_TEST_CLEANUP seconds (0.3); the marker counts the cancellations
    and says if cleanup ended."""
    if scope["type"] != "http":
        return
    _marker("entered")
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        _marker("cancelled")
        try:
            await asyncio.sleep(float(os.environ.get("CDAPHNE_TEST_CLEANUP", "0.3")))
        except asyncio.CancelledError:
            _marker("cancelled again")
            raise
        _marker("cleaned up")
        raise


async def shutdown_hangs(scope, receive, send):
    """Starts, then never answers lifespan.shutdown; the marker says whether
    its cleanup saw a cancellation."""
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            _marker("cancelled")
            raise
        except BaseException as exc:
            _marker(type(exc).__name__)
            raise
    await send_json(send, {})


async def raises_in_lifespan(scope, receive, send):
    """Raises what CDAPHNE_TEST_RAISE names (SystemExit(N) for "exit:N",
    else KeyboardInterrupt) in lifespan, when CDAPHNE_TEST_RAISE_AT says:
    at startup (the default), after startup (on a request to /raise), or
    at shutdown.  HTTP gets 204."""
    at = os.environ.get("CDAPHNE_TEST_RAISE_AT", "startup")
    if scope["type"] == "lifespan":
        await receive()
        if at != "startup":
            await send({"type": "lifespan.startup.complete"})
            if at == "after":
                await RAISE_NOW.wait()
            else:
                await receive()
        what = os.environ.get("CDAPHNE_TEST_RAISE", "kbint")
        if what.startswith("exit:"):
            raise SystemExit(int(what[5:]))
        raise KeyboardInterrupt
    if scope["path"] == "/raise":
        RAISE_NOW.set()
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body"})


RAISE_NOW = asyncio.Event()
