"""Hostile-but-legal receive() patterns, for tests/test_receive_reuse.py.

The server reuses receive()'s waiter, its futures and the StopIteration
that returns a message (waiter.c, cycle.c).  Each WebSocket route takes
the client's numbered text messages with one pattern and, on "end",
sends back the list of every text it saw, in the order it saw them (and
notes of anything wrong).  The HTTP route does the same for body chunks.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import random
import sys
import weakref

VAR = contextvars.ContextVar("var", default="unset")


async def accept(receive, send) -> None:
    msg = await receive()
    assert msg["type"] == "websocket.connect", msg
    await send({"type": "websocket.accept"})


async def report(send, seen: list) -> None:
    await send({"type": "websocket.send", "text": json.dumps(seen)})
    await send({"type": "websocket.close"})


def text_of(msg: dict, seen: list) -> str | None:
    """The message's text, appended to seen; None for a disconnect."""
    if msg["type"] != "websocket.receive":
        seen.append(f"! {msg['type']}")
        return None
    seen.append(msg["text"])
    return msg["text"]


async def wait_for_tiny(receive, send, seen: list) -> None:
    # Cancelled mid-wait over and over (timeout 0 cancels a task that
    # never ran; tiny ones cancel the app's own task in its await).
    rnd = random.Random(1)
    while True:
        try:
            msg = await asyncio.wait_for(receive(), rnd.choice((0, 1e-6, 1e-4, 1e-3)))
        except TimeoutError:
            continue
        if text_of(msg, seen) in (None, "end"):
            return


async def shielded(receive, send, seen: list) -> None:
    # A shielded receive() goes on when its waiter is cancelled: awaited
    # again until it gives its message.
    pending = None
    while True:
        if pending is None:
            pending = asyncio.ensure_future(receive())
        try:
            msg = await asyncio.wait_for(asyncio.shield(pending), 1e-4)
        except TimeoutError:
            continue
        pending = None
        if text_of(msg, seen) in (None, "end"):
            return


async def wait_set(receive, send, seen: list) -> None:
    # asyncio.wait({receive task, sleep}): the receive task is cancelled
    # when the sleep wins.
    while True:
        rt = asyncio.ensure_future(receive())
        st = asyncio.ensure_future(asyncio.sleep(1e-4))
        done, _ = await asyncio.wait({rt, st}, return_when=asyncio.FIRST_COMPLETED)
        st.cancel()
        if rt not in done:
            rt.cancel()
            try:
                msg = await rt
            except asyncio.CancelledError:
                continue
        else:
            msg = rt.result()
        if text_of(msg, seen) in (None, "end"):
            return


async def cancelled_task(receive, send, seen: list) -> None:
    # receive() in a task cancelled after a random number of loop steps.
    rnd = random.Random(2)
    while True:
        t = asyncio.ensure_future(receive())
        for _ in range(rnd.randrange(4)):
            await asyncio.sleep(0)
        t.cancel()
        try:
            msg = await t
        except asyncio.CancelledError:
            continue
        if text_of(msg, seen) in (None, "end"):
            return


async def two_tasks(receive, send, seen: list) -> None:
    # Two tasks in receive() at once; the second is cancelled and made
    # again every few messages.  The first must not see its cancellation.
    done = asyncio.Event()
    rnd = random.Random(3)

    async def reader(name: str) -> None:
        try:
            while not done.is_set():
                msg = await receive()
                if text_of(msg, seen) in (None, "end"):
                    done.set()
        except asyncio.CancelledError:
            if name == "a" and not done.is_set():
                seen.append("! reader a cancelled")
            raise

    a = asyncio.ensure_future(reader("a"))
    while not done.is_set():
        b = asyncio.ensure_future(reader("b"))
        for _ in range(rnd.randrange(1, 6)):
            await asyncio.sleep(0)
            if done.is_set():
                break
        b.cancel()
        try:
            await b
        except asyncio.CancelledError:
            pass
        if a.done():
            break
    if not a.done():
        a.cancel()
    try:
        await a
    except asyncio.CancelledError:
        pass
    if not done.is_set():
        seen.append("! reader a ended early")


async def groups(receive, send, seen: list) -> None:
    # TaskGroup with a receiving task and a sleeping one; gather of a
    # receive() with a sleep.
    n = 0
    while True:
        n += 1
        if n % 2 and hasattr(asyncio, "TaskGroup"):
            async with asyncio.TaskGroup() as tg:
                rt = tg.create_task(receive())
                tg.create_task(asyncio.sleep(0))
            msg = rt.result()
        else:
            msg, _ = await asyncio.gather(receive(), asyncio.sleep(0))
        if text_of(msg, seen) in (None, "end"):
            return


async def keeper(receive, send, seen: list) -> None:
    # Keeps every object it can reach: the awaitables, the futures the
    # task waits on (from a done callback and from _fut_waiter), the
    # StopIterations of hand-driven receive()s, and contextvars set
    # around each receive().  Checks later that none changed.
    task = asyncio.current_task()
    kept_aw, kept_fut, kept_stop, kept_tasks = [], [], [], []
    fut_states = []

    def on_step(n):
        async def peek() -> None:
            fut = task._fut_waiter
            if fut is not None:
                kept_fut.append(fut)
                fut.add_done_callback(lambda f: fut_states.append((n, f.cancelled())))

        return asyncio.ensure_future(peek())

    n = 0
    while True:
        n += 1
        token = VAR.set(f"v{n}")
        if n % 3 == 0:
            # Hand-driven: the message comes in StopIteration if there.
            aw = receive()
            kept_aw.append(aw)
            it = aw.__await__()
            try:
                fut = it.send(None)
            except StopIteration as e:
                kept_stop.append((e, e.value))
                msg = e.value
            else:
                # Not there yet: wait for the future it yielded (which
                # it marked blocking, as a task would see it).
                await asyncio.wait({fut})
                try:
                    it.send(None)
                except StopIteration as e:
                    kept_stop.append((e, e.value))
                    msg = e.value
                else:
                    seen.append("! hand-driven receive() yielded twice")
                    return
        elif n % 3 == 1:
            # In a task whose done callback keeps the task and its
            # result; a receive() made and dropped unawaited first.
            receive()
            t = asyncio.ensure_future(receive())
            t.add_done_callback(lambda t: kept_tasks.append((t, t.result())))
            await asyncio.wait({t})
            msg = t.result()
        else:
            aw = receive()
            kept_aw.append(aw)
            peek = on_step(n)
            msg = await aw
            await peek
        if VAR.get() != f"v{n}":
            seen.append(f"! contextvar {VAR.get()} after receive {n}")
        VAR.reset(token)
        if text_of(msg, seen) in (None, "end"):
            break
    # Nothing kept was changed by later receive()s.
    for e, value in kept_stop:
        if e.value is not value or e.args != (value,):
            seen.append(f"! kept StopIteration changed: {e.args!r} vs {value!r}")
    for t, result in kept_tasks:
        if t.result() is not result:
            seen.append("! kept task result changed")
    for fut in kept_fut:
        if not fut.done():
            seen.append("! kept receive future pending again")
    if len({id(a) for a in kept_aw}) != len(kept_aw):
        seen.append("! receive() awaitables handed out twice")


async def traced(receive, send, seen: list) -> None:
    # A tracer (as coverage or a debugger runs) sees the StopIterations
    # that return messages and keeps them: they must stay as they were.
    kept = []

    def tracer(frame, event, arg):
        if event == "exception" and arg[0] is StopIteration:
            kept.append((arg[1], arg[1].value, arg[1].args, list(arg[1].args)))
        return tracer

    sys.settrace(tracer)
    try:
        await ws_default(receive, send, seen)
    finally:
        sys.settrace(None)
    changed = [
        (e.value, v)
        for e, v, a, items in kept
        if e.value is not v
        or e.args is not a
        or any(x is not y for x, y in zip(a, items, strict=True))
    ]

    if changed:
        seen.append(f"! {len(changed)} kept StopIterations changed: {changed!r}"[:300])


async def ws_default(receive, send, seen: list) -> None:
    while True:
        if text_of(await receive(), seen) in (None, "end"):
            return


async def mutator(receive, send, seen: list) -> None:
    # The server makes a message in one the app let go of (cycle.c,
    # cd_cycle_message).  This app changes what it gets in every legal way
    # (keys added, removed, put back in another order, values replaced by
    # equal ones), keeps some, and checks that each message is a new dict
    # as a copy would be, keys in order, and that the kept ones stay.
    kept = []
    n = 0
    while True:
        msg = await receive()
        n += 1
        if msg["type"] != "websocket.receive":
            seen.append(f"! {msg['type']}")
            return
        key = "text" if "text" in msg else "bytes"
        value = msg.get(key)
        expected = [("type", "websocket.receive"), (key, value)]
        if type(msg) is not dict or list(msg.items()) != expected:
            seen.append(f"! message {n}: {msg!r}")
        if any(msg is k for k, _ in kept):
            seen.append(f"! message {n} is a kept one")
        seen.append(value.decode() if isinstance(value, bytes) else value)
        if value in ("end", b"end"):
            break
        change = n % 9
        if change == 1:
            msg["extra"] = n
        elif change == 2:
            del msg["type"]
            msg["type"] = "websocket.receive"  # now after the payload
        elif change == 3:
            msg["type"] = "websocket." + "receive"[: n % 2 + 6] + "receive"[n % 2 + 6 :]
        elif change == 4:
            msg.clear()
        elif change == 5:
            msg[key] = "replaced"
        elif change == 6:
            kept.append((msg, dict(msg)))
        elif change == 7:
            msg.pop(key)
        elif change == 8:
            msg["type"] = "changed"
    for k, copy in kept:
        if k != copy or list(k) != list(copy):
            seen.append(f"! kept message changed: {k!r} vs {copy!r}")


class Marker:
    """An app's own value, whose end a weak reference shows."""


async def own_values(receive, send, seen: list) -> None:
    # A text message's payload replaced by a value of the app's own, then
    # the message let go of: the value goes with it, as with a new dict,
    # even while the messages after it are binary (made in other dicts).
    # Each binary message notes whether the values put so far are gone.
    refs = []
    while True:
        msg = await receive()
        if msg["type"] != "websocket.receive":
            seen.append(f"! {msg['type']}")
            return
        if msg.get("text") == "end":
            seen.append("end")
            return
        if "text" in msg:
            value = Marker()
            refs.append(weakref.ref(value))
            msg["text"] = value
            del value
            seen.append("put")
        else:
            seen.append("alive" if any(r() is not None for r in refs) else "gone")
        del msg
        await send({"type": "websocket.send", "text": "ok"})  # lets it go


async def slow_disconnect(receive, send, seen: list) -> None:
    # Waits in receive() (a kept future pending) when the client goes.
    while True:
        msg = await receive()
        if text_of(msg, seen) is None:
            print("slow-disconnect saw", json.dumps(seen), file=sys.stderr, flush=True)
            return


ROUTES = {
    "/wait-for": wait_for_tiny,
    "/shield": shielded,
    "/wait-set": wait_set,
    "/cancel-task": cancelled_task,
    "/two-tasks": two_tasks,
    "/groups": groups,
    "/keeper": keeper,
    "/default": ws_default,
    "/traced": traced,
    "/mutator": mutator,
    "/own-values": own_values,
}


async def http_body(receive, send) -> None:
    # The request body in many small chunks, read under tiny timeouts.
    rnd = random.Random(4)
    body = []
    while True:
        try:
            msg = await asyncio.wait_for(receive(), rnd.choice((0, 1e-6, 1e-4)))
        except TimeoutError:
            continue
        assert msg["type"] == "http.request", msg
        body.append(msg["body"])
        if not msg.get("more_body"):
            break
    data = b"".join(body)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def http_two_readers(receive, send) -> None:
    # Two tasks read the body at once; the second is cancelled and made
    # again every few steps.  The body comes whole, in order.
    body = []
    done = asyncio.Event()
    rnd = random.Random(5)

    async def reader(name: str) -> None:
        try:
            while not done.is_set():
                msg = await receive()
                body.append(msg["body"])
                if not msg.get("more_body"):
                    done.set()
        except asyncio.CancelledError:
            if name == "a" and not done.is_set():
                body.append(b"! reader a cancelled")
            raise

    a = asyncio.ensure_future(reader("a"))
    while not done.is_set() and not a.done():
        b = asyncio.ensure_future(reader("b"))
        for _ in range(rnd.randrange(1, 6)):
            await asyncio.sleep(0)
        b.cancel()
        await asyncio.gather(b, return_exceptions=True)
    a.cancel()
    await asyncio.gather(a, return_exceptions=True)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"".join(body)})


async def app(scope, receive, send) -> None:
    if scope["type"] == "http":
        if scope["path"] == "/two-readers":
            await http_two_readers(receive, send)
        else:
            await http_body(receive, send)
        return
    if scope["type"] != "websocket":
        return
    await accept(receive, send)
    if scope["path"] == "/slow-disconnect":
        await slow_disconnect(receive, send, [])
        return
    seen: list = []
    await ROUTES[scope["path"]](receive, send, seen)
    await report(send, seen)
