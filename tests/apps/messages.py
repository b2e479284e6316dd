"""Apps that cancel receive() and send() and then go on: nothing may be lost.

HTTP paths: /body-timeouts, /body-race, /body-zero-timeout.  WebSocket
paths: /slow-receive, /race, /zero-timeout, /slow-send, /hold (with HTTP
GET /go), /close-long, /close-code (?code=N), /echo.
"""

from __future__ import annotations

import asyncio

GO = {"event": None}


def _go() -> asyncio.Event:
    if GO["event"] is None:
        GO["event"] = asyncio.Event()
    return GO["event"]


async def cancel_after_wake(receive) -> bool:
    """Await receive() in a task and cancel that task in the loop turn in
    which its future completes, before the task runs again.  True if the
    task was cancelled that way (the message must stay queued)."""
    loop = asyncio.get_running_loop()

    async def one():
        return await receive()

    task = loop.create_task(one())
    outcome = {"woken": False}

    def poll() -> None:
        waiter = task._fut_waiter
        if waiter is not None and waiter.done():
            outcome["woken"] = True
            task.cancel()
        elif not task.done():
            loop.call_soon(poll)

    # Let the task start and wait on its future first.
    await asyncio.sleep(0)
    loop.call_soon(poll)
    try:
        await task
    except asyncio.CancelledError:
        return outcome["woken"]
    return False


async def respond(send, status: int, body: bytes, headers=()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), *headers]})
    await send({"type": "http.response.body", "body": body})


async def http(scope, receive, send):
    path = scope["path"]
    if path == "/go":
        _go().set()
        return await respond(send, 200, b"go")
    if path == "/body-timeouts":
        body, timeouts = b"", 0
        while True:
            try:
                msg = await asyncio.wait_for(receive(), 0.1)
            except TimeoutError:
                timeouts += 1
                continue
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        return await respond(send, 200, body,
                             [(b"x-timeouts", str(timeouts).encode())])
    if path == "/body-race":
        woken = await cancel_after_wake(receive)
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        return await respond(send, 200, body,
                             [(b"x-woken", str(int(woken)).encode())])
    if path == "/body-zero-timeout":
        # The body is queued; wait_for(receive(), 0) wraps receive() in a
        # task cancelled before it runs: it must take nothing.
        await asyncio.sleep(0.2)
        try:
            await asyncio.wait_for(receive(), 0)
        except TimeoutError:
            pass
        try:
            msg = await asyncio.wait_for(receive(), 2)
        except TimeoutError:
            return await respond(send, 200, b"lost")
        return await respond(send, 200, msg.get("body", b""))
    if path == "/awaitable-throw-close":
        # receive()'s awaitable takes throw() and close() as asyncio's
        # future iterator does; neither takes the queued body.
        await asyncio.sleep(0.2)
        try:
            receive().throw(ValueError("thrown"))
            thrown = "nothing"
        except ValueError as e:
            thrown = str(e)
        closed = receive().close()
        msg = await receive()
        return await respond(send, 200, msg.get("body", b""),
                             [(b"x-thrown", thrown.encode()),
                              (b"x-closed", repr(closed).encode())])
    if path == "/awaitable-by-hand":
        # Driven by hand, the awaitables end as iterators do: next() and
        # send(None) raise StopIteration carrying the result.
        it = receive().__await__()
        try:
            it.send(None)
            got = "no StopIteration"
        except StopIteration as e:
            got = e.value["body"].decode()
        ends = []
        start = {"type": "http.response.start", "status": 200,
                 "headers": [(b"x-got", got.encode())]}
        for msg, drive in ((start, next),
                           ({"type": "http.response.body", "body": b"a",
                             "more_body": True}, lambda i: i.send(None))):
            try:
                drive(send(msg).__await__())
                ends.append("no StopIteration")
            except StopIteration as e:
                ends.append(repr(e.value))
        return await send({"type": "http.response.body",
                           "body": (" ".join(ends)).encode()})
    return await respond(send, 404, b"not found")


async def ws_echo_each(receive, send, first=None) -> None:
    msg = first if first is not None else await receive()
    while msg["type"] != "websocket.disconnect":
        if msg.get("text") is not None:
            await send({"type": "websocket.send", "text": msg["text"]})
        else:
            await send({"type": "websocket.send", "bytes": msg["bytes"]})
        msg = await receive()


async def websocket(scope, receive, send):
    path = scope["path"]
    connect = await receive()
    assert connect["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    if path == "/close-code":
        code = int(scope["query_string"].decode() or "1000")
        try:
            await send({"type": "websocket.close", "code": code})
        except ValueError as exc:
            await send({"type": "websocket.close", "code": 4000,
                        "reason": f"ValueError {exc}"[:100]})
        return
    if path == "/slow-receive":
        # Many receive() calls time out while the client sends slowly.
        while True:
            try:
                msg = await asyncio.wait_for(receive(), 0.05)
            except TimeoutError:
                continue
            if msg["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": msg["text"]})
    elif path == "/race":
        await send({"type": "websocket.send", "text": "ready"})
        woken = await cancel_after_wake(receive)
        msg = await receive()
        await send({"type": "websocket.send",
                    "text": f"woken={int(woken)} got={msg.get('text')}"})
        await ws_echo_each(receive, send)
    elif path == "/zero-timeout":
        await send({"type": "websocket.send", "text": "ready"})
        first = await receive()
        await asyncio.sleep(0.1)  # The client's later messages are queued.
        try:
            await asyncio.wait_for(receive(), 0)
        except TimeoutError:
            pass
        msg = await receive()
        await send({"type": "websocket.send",
                    "text": f"{first.get('text')} {msg.get('text')}"})
        await ws_echo_each(receive, send)
    elif path == "/slow-send":
        timeouts = 0
        for i in range(40):
            # A new bytes object each time, dropped once send() returns.
            data = bytes([i]) * (256 * 1024 + 1)
            try:
                await asyncio.wait_for(send({"type": "websocket.send", "bytes": data}), 0.2)
            except TimeoutError:
                timeouts += 1
        await send({"type": "websocket.send", "text": f"done timeouts={timeouts}"})
        await ws_echo_each(receive, send)
    elif path == "/hold":
        # Never receive() until GET /go: the server must stop reading.
        await _go().wait()
        got = []
        while len(got) < 40:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                break
            data = msg["bytes"]
            got.append((data[0], len(data)))
        in_order = [i for i, _ in got] == list(range(40))
        sizes = {n for _, n in got}
        await send({"type": "websocket.send",
                    "text": f"count={len(got)} in_order={in_order} sizes={sorted(sizes)}"})
        await ws_echo_each(receive, send)
    elif path == "/close-long":
        await send({"type": "websocket.close", "code": 4001, "reason": "é" * 100})
        while (await receive())["type"] != "websocket.disconnect":
            pass
    else:
        await ws_echo_each(receive, send)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        raise RuntimeError("no lifespan here")
    if scope["type"] == "http":
        return await http(scope, receive, send)
    return await websocket(scope, receive, send)
