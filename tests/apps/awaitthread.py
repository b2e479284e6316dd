"""An app that calls receive() (or send()) on the server's loop and awaits
what it returned in another thread, for tests/test_receive_reuse.py.

receive() itself runs on the loop (so it is not deferred as an off-thread
call is, tests/apps/threadsend.py); only its awaitable moves.  Each route
reports, as JSON, what awaiting it off the loop's thread did ("off") and
which message a later receive() on the loop got ("next").  The client
sends "m1" then "m2" (a WebSocket) or the body "m1" (HTTP): "next" must
be "m1" (nothing taken off-thread).
"""

from __future__ import annotations

import asyncio
import json
import threading


def outcome(call) -> str:
    """What call() did: "ok:<message text or body>", "yielded" (it
    waits), or "<exception type>:<its text up to the ';'>"."""
    try:
        value = call()
    except StopIteration as stop:
        value = stop.value
    except BaseException as exc:  # noqa: BLE001 - reported, not hidden
        return f"{type(exc).__name__}:{str(exc).split(';')[0]}"
    else:
        if not isinstance(value, dict):
            return "yielded"
    text = value.get("text", value.get("body", b""))
    return "ok:" + (text.decode() if isinstance(text, bytes) else text)


async def wait(aw):
    return await aw


def by_hand(aw) -> list[str]:
    """Drives the awaitable one step by hand, as a loop of its own would."""
    return [outcome(lambda: aw.__await__().send(None))]


def own_loop(aw) -> list[str]:
    """asyncio.run() in this thread: a Task of another loop awaits it."""
    return [outcome(lambda: asyncio.run(wait(aw)))]


def threadsafe(aw) -> list[str]:
    """run_coroutine_threadsafe() to a loop running in a thread of its own."""
    other = asyncio.new_event_loop()
    thread = threading.Thread(target=other.run_forever)
    thread.start()
    try:
        fut = asyncio.run_coroutine_threadsafe(wait(aw), other)
        return [outcome(lambda: fut.result(timeout=30))]
    finally:
        other.call_soon_threadsafe(other.stop)
        thread.join()
        other.close()


def resumed(it) -> list[str]:
    """The awaitable already waits (yielded on the loop, its future done):
    send(), throw() and close() from this thread."""
    return [
        outcome(lambda: it.send(None)),
        outcome(lambda: it.throw(ValueError("thrown"))),
        outcome(it.close),
    ]


OFF = {"/hand": by_hand, "/run": own_loop, "/threadsafe": threadsafe}


async def off_thread(fn, arg) -> list[str]:
    return await asyncio.get_running_loop().run_in_executor(None, fn, arg)


async def websocket(scope, receive, send):
    msg = await receive()
    assert msg["type"] == "websocket.connect", msg
    await send({"type": "websocket.accept"})
    if scope["path"] == "/resumed":
        it = receive().__await__()
        fut = it.send(None)  # No message yet: the client waits for "go".
        await send({"type": "websocket.send", "text": "go"})
        while not fut.done():  # Till "m1" is there.
            await asyncio.sleep(0.01)
        off = await off_thread(resumed, it)
        it.close()
    else:
        await asyncio.sleep(0.05)  # Most often "m1" is queued by now.
        off = await off_thread(OFF[scope["path"]], receive())
    msg = await receive()
    report = {"off": off, "next": msg.get("text", msg["type"])}
    await send({"type": "websocket.send", "text": json.dumps(report)})
    await send({"type": "websocket.close"})


BIG = 16 << 20  # More than the socket takes while the client does not read.


async def http_send(send):
    """send() on the loop waits for the output to drain (the server runs
    with a tiny --write-buffer-size); its awaitable awaited off-thread."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    aw = send({"type": "http.response.body", "body": b"x" * BIG, "more_body": True})
    off = await off_thread(by_hand, aw)
    await aw  # On the loop: waits till the client reads.
    await send({"type": "http.response.body", "body": json.dumps(off).encode()})


async def http(scope, receive, send):
    if scope["path"] == "/send":
        return await http_send(send)
    off = await off_thread(OFF[scope["path"]], receive())
    try:  # The body is "m1" only: taken off-thread, nothing would come.
        msg = await asyncio.wait_for(receive(), 10)
    except TimeoutError:
        msg = {"type": "timeout"}
    report = {"off": off, "next": msg.get("body", b"").decode() or msg["type"]}
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": json.dumps(report).encode()})


async def app(scope, receive, send):
    if scope["type"] == "websocket":
        await websocket(scope, receive, send)
    elif scope["type"] == "http":
        await http(scope, receive, send)
