"""Scenarios around a receive() that waits: cancellation, timeouts, shield,
gather, TaskGroup, two receive()s at once, what the task shows it waits on,
debug mode.  Each runs against any ASGI-style receive/send pair: under
cdaphne (the app below) and, in the test process, against Daphne's shape (an
asyncio.Queue's get() on a stock asyncio loop), and both must report the
same results.

Protocol with the client: the scenario sends "need:X" when it wants the
client to send X, and "result:<json>" once done."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import weakref


async def need(send, text: str) -> None:
    await send({"type": "websocket.send", "text": "need:" + text})


async def waiting(task: asyncio.Task) -> None:
    """Yields until task waits on a future that is still pending."""
    for _ in range(100):
        fut = getattr(task, "_fut_waiter", None)
        if fut is not None and not fut.done():
            return
        await asyncio.sleep(0)
    raise AssertionError("the task never waited")


async def how_it_ended(aw) -> object:
    """How awaiting aw ended: "returned", or the CancelledError's args."""
    try:
        await aw
        return "returned"
    except asyncio.CancelledError as exc:
        return ["cancelled", list(exc.args)]


async def cancel_while_waiting(receive, send):
    """A receive() cancelled while it waits takes nothing: the next one
    gets the message."""
    t = asyncio.ensure_future(receive())
    await waiting(t)
    t.cancel("stop")
    ended = await how_it_ended(t)
    await need(send, "one")
    msg = await receive()
    return [ended, t.cancelled(), msg["text"]]


async def cancel_message_inside(receive, send):
    """The CancelledError raised at the awaiting receive() carries the
    cancel message as it is (a tuple stays one argument)."""
    seen = []

    async def receiver():
        try:
            await receive()
        except asyncio.CancelledError as exc:
            seen.append(list(exc.args))
            raise

    t = asyncio.ensure_future(receiver())
    await waiting(t)
    t.cancel(("why", 1))
    try:
        await t
    except asyncio.CancelledError:
        pass
    await need(send, "twelve")
    return [seen, (await receive())["text"]]


async def cancel_after_wake(receive, send):
    """Cancelled after its message came but before its task ran: the
    message stays for the next receive()."""
    t = asyncio.ensure_future(receive())
    await waiting(t)
    fut = t._fut_waiter
    await need(send, "two")
    # One loop iteration at a time: the iteration that sees the future
    # done runs before the task's wake-up, queued after this resumption.
    deadline = time.monotonic() + 10
    while not fut.done() and time.monotonic() < deadline:
        await asyncio.sleep(0)
    t.cancel()
    try:
        await t
        outcome = "returned"
    except asyncio.CancelledError:
        outcome = "cancelled"
    msg = await receive()
    return [fut.done(), fut.cancelled(), outcome, msg["text"]]


async def timeouts(receive, send):
    """asyncio.timeout() and wait_for() around receive(); nothing lost."""
    got = []
    try:
        async with asyncio.timeout(0.02):
            await receive()
        got.append("no timeout")
    except TimeoutError:
        got.append("timeout")
    try:
        await asyncio.wait_for(receive(), 0.02)
        got.append("no timeout")
    except TimeoutError:
        got.append("wait_for timeout")
    await need(send, "three")
    got.append((await asyncio.wait_for(receive(), 10))["text"])
    return got


async def shielded(receive, send):
    """A shielded receive() outlives the timeout around the shield and
    gets the message."""
    inner = asyncio.ensure_future(receive())
    try:
        await asyncio.wait_for(asyncio.shield(inner), 0.02)
        got = ["no timeout"]
    except TimeoutError:
        got = ["timeout", inner.done()]
    await need(send, "four")
    got.append((await inner)["text"])
    return got


async def gathered(receive, send):
    """Two receive()s at once (gather): each gets one message."""
    g = asyncio.gather(receive(), receive())
    await asyncio.sleep(0.01)
    await need(send, "five")
    await need(send, "six")
    a, b = await g
    return sorted([a["text"], b["text"]])


async def concurrent_one_cancelled(receive, send):
    """Two receive()s wait; one task is cancelled; the other gets the
    message, and nothing is lost."""
    t1 = asyncio.ensure_future(receive())
    t2 = asyncio.ensure_future(receive())
    await waiting(t1)
    await waiting(t2)
    t1.cancel()
    try:
        await t1
        first = "returned"
    except asyncio.CancelledError:
        first = "cancelled"
    await asyncio.sleep(0.01)
    await need(send, "seven")
    second = (await asyncio.wait_for(t2, 10))["text"]
    return [first, t2.cancelled(), second]


async def task_group(receive, send):
    """A TaskGroup whose other task fails cancels the waiting receive();
    the message stays for the next one."""

    async def boom():
        await asyncio.sleep(0.01)
        raise ValueError("boom")

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(receive())
            tg.create_task(boom())
        kind = "no error"
    except BaseException as exc:  # an ExceptionGroup (3.11+)
        kind = type(exc).__name__
    await need(send, "eight")
    return [kind, (await receive())["text"]]


async def what_the_task_waits_on(receive, send):
    """While a receive() waits, its task's _fut_waiter is a future of the
    loop (asyncio.isfuture), pending; once the message came, done with
    the result None or the message."""
    t = asyncio.ensure_future(receive())
    await waiting(t)
    fut = t._fut_waiter
    loop = asyncio.get_running_loop()
    seen = [
        asyncio.isfuture(fut),
        asyncio.futures._get_loop(fut) is loop,
        fut.done(),
        fut.cancelled(),
        "wait_for=" in repr(t),
    ]
    await need(send, "nine")
    msg = await t
    seen += [fut.done(), fut.cancelled(), t._fut_waiter is None, msg["text"]]
    return seen


async def debug_mode(receive, send):
    """In debug mode the waiting receive() still works (cdaphne waits on a
    real asyncio.Future then, which records where it was made)."""
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    try:
        t = asyncio.ensure_future(receive())
        await waiting(t)
        fut = t._fut_waiter
        is_future = isinstance(fut, asyncio.Future)
        await need(send, "ten")
        msg = await t
    finally:
        loop.set_debug(False)
    return [is_future, msg["text"]]


async def waits_on(receive, send):
    """What a waiting receive()'s task waits on, by type name (cdaphne's
    own: a RecvFuture where the loop allows, else an asyncio.Future)."""
    t = asyncio.ensure_future(receive())
    await waiting(t)
    name = type(t._fut_waiter).__name__
    await need(send, "eleven")
    return [name, (await t)["text"]]


class Marker:
    pass


async def message_not_kept(receive, send):
    """A received message lives as long as the app keeps it: nothing of
    the server's holds it once the app let go of it and sent on."""
    await need(send, "thirteen")
    msg = await receive()
    marker = Marker()
    ref = weakref.ref(marker)
    msg["marker"] = marker
    del marker, msg
    await need(send, "fourteen")
    return [ref() is not None, (await receive())["text"]]


async def call_soon_patched(receive, send):
    """A call_soon set on the loop instance schedules the wake-up of a
    waiting receive() (it wins over the class's, as for any Future), and
    no longer once deleted."""
    loop = asyncio.get_running_loop()
    calls = []

    def call_soon(cb, *args, context=None):
        calls.append(cb)
        return type(loop).call_soon(loop, cb, *args, context=context)

    loop.call_soon = call_soon
    try:
        await need(send, "fifteen")
        first = (await receive())["text"]
        woken_through_it = len(calls) >= 1
    finally:
        del loop.call_soon
    calls.clear()
    await need(send, "sixteen")
    second = (await receive())["text"]
    return [woken_through_it, calls, first, second]


class SubTask(asyncio.Task):
    pass


async def task_kinds(receive, send):
    """A receive() that waits wakes each kind of task the same way: a Task
    subclass (the C task's wake-up bound to it), asyncio's Python Task
    (its wake-up a bound method) and a plain Task, also two at once; a
    done callback added next to a task's wake-up gets the future the task
    waited on."""
    loop = asyncio.get_running_loop()
    py_task = getattr(asyncio.tasks, "_PyTask", asyncio.Task)
    seen = []
    for name, make in (
        ("sub", lambda c: SubTask(c, loop=loop)),
        ("py", lambda c: py_task(c, loop=loop)),
        ("plain", loop.create_task),
    ):
        t = make(receive())
        await waiting(t)
        fut = t._fut_waiter
        got = []
        fut.add_done_callback(lambda f, fut=fut, got=got: got.append(f is fut))
        await need(send, name)
        seen += [type(t).__name__, (await t)["text"]]
        await asyncio.sleep(0)
        seen.append(got)
    a, b = SubTask(receive(), loop=loop), py_task(receive(), loop=loop)
    await waiting(a)
    await waiting(b)
    await need(send, "x")
    await need(send, "y")
    seen.append(sorted(m["text"] for m in await asyncio.gather(a, b)))
    return seen


SCENARIOS = {
    "call_soon_patched": call_soon_patched,
    "task_kinds": task_kinds,
    "cancel_while_waiting": cancel_while_waiting,
    "cancel_after_wake": cancel_after_wake,
    "cancel_message_inside": cancel_message_inside,
    "timeouts": timeouts,
    "shielded": shielded,
    "gathered": gathered,
    "concurrent_one_cancelled": concurrent_one_cancelled,
    "task_group": task_group,
    "what_the_task_waits_on": what_the_task_waits_on,
    "debug_mode": debug_mode,
    "message_not_kept": message_not_kept,
}


async def app(scope, receive, send):
    if scope["type"] != "websocket":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    name = scope["path"].strip("/")
    if name in ENDINGS:
        return await ENDINGS[name](receive, send)
    scenario = waits_on if name == "waits_on" else SCENARIOS[name]
    try:
        result = await scenario(receive, send)
    except Exception as exc:  # reported, so the test shows it
        result = ["error", repr(exc)]
    await send({"type": "websocket.send", "text": "result:" + json.dumps(result)})
    while (await receive())["type"] != "websocket.disconnect":
        pass


# Red team (session 9): an app that gets hold of the future its waiting
# receive() yields (the task's _fut_waiter) and uses it as any asyncio
# future.  Under Daphne's shape it is an asyncio.Future of Queue.get.


async def held_future(receive, send):
    """The future a waiting receive() yields, held; its message sent."""
    t = asyncio.ensure_future(receive())
    await waiting(t)
    return t, t._fut_waiter


def exc_name(fn, *args):
    """What fn(*args) raised: its type's name and its arguments."""
    try:
        fn(*args)
        return "returned"
    except BaseException as exc:
        return [type(exc).__name__, list(map(str, exc.args))]


def exc_type(fn, *args):
    """What fn(*args) raised: its type's name (the messages name the type
    or are worded differently)."""
    got = exc_name(fn, *args)
    return got if got == "returned" else got[0]


async def misuse_before_done(receive, send):
    """result()/exception() before done, bad arguments, pickle and copy:
    the same errors as an asyncio.Future's."""
    import copy
    import pickle

    t, fut = await held_future(receive, send)
    seen = [
        exc_name(fut.result),
        exc_name(fut.exception),
        exc_type(fut.add_done_callback),
        exc_type(fut.add_done_callback, print, print),
        exc_type(fut.cancel, 1, 2),
        exc_type(pickle.dumps, fut),
        exc_type(copy.copy, fut),
        exc_type(copy.deepcopy, fut),
        asyncio.isfuture(fut),
        asyncio.ensure_future(fut) is fut,
        asyncio.wrap_future(fut) is fut,
        fut.get_loop() is asyncio.get_running_loop(),
    ]
    await need(send, "a5")
    seen.append((await t)["text"])
    seen += [fut.result(), fut.exception(), fut.done(), fut.cancelled()]
    return seen


async def callbacks_on_held_future(receive, send):
    """Done callbacks added to the held future (through a bound method kept
    from the first wait): one raises (the loop's exception handler gets it),
    one cancels (too late: False), one removes another (too late: 0), one
    re-enters receive(), and remove_done_callback while pending."""
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(repr(ctx.get("exception"))))
    t, fut = await held_future(receive, send)
    add = fut.add_done_callback
    seen = []
    inner = []

    def raises(f):
        seen.append("raises")
        raise ValueError("from a callback")

    def cancels(f):
        seen.append(["cancel", f.cancel("late"), f is fut])

    def removes(f):
        seen.append(["remove", f.remove_done_callback(raises)])

    def reenters(f):
        inner.append(asyncio.ensure_future(receive()))

    def never(f):
        seen.append("never")

    add(raises)
    add(never)
    add(cancels)
    add(never)
    add(removes)
    add(reenters)
    seen.append(fut.remove_done_callback(never))
    await need(send, "a6")
    first = (await t)["text"]
    await asyncio.sleep(0.01)
    await need(send, "a7")
    second = (await asyncio.wait_for(inner[0], 10))["text"]
    late = []
    add(lambda f: late.append(f.done()))
    await asyncio.sleep(0)
    loop.set_exception_handler(None)
    return [seen, errors, first, second, late]


async def wait_and_shield_on_held_future(receive, send):
    """asyncio.wait([fut]) and shield(fut) on the held future."""
    t, fut = await held_future(receive, send)
    done, pending = await asyncio.wait([fut], timeout=0.01)
    before = [len(done), len(pending)]
    shielded = asyncio.shield(fut)
    await need(send, "a8")
    done, pending = await asyncio.wait([fut], timeout=10)
    return [before, len(done), len(pending), await shielded, (await t)["text"]]


async def held_across_messages(receive, send):
    """Futures held (strongly, weakly, through a bound method or an
    attribute) across later messages keep their state; every later wait
    yields a pending future; gc.collect() in between changes nothing."""
    import gc

    held = []
    weak = []
    texts = []
    for i, how in enumerate(["strong", "weak", "bound", "attr", "none"]):
        t, fut = await held_future(receive, send)
        if how == "strong":
            held.append(fut)
        elif how == "weak":
            weak.append(weakref.ref(fut))
        elif how == "bound":
            held.append(fut.add_done_callback)
        elif how == "attr":
            fut.mark = i
        del fut
        gc.collect()
        await need(send, f"h{i}")
        texts.append((await t)["text"])
    t, fut = await held_future(receive, send)
    fresh = [fut.done(), fut not in held]
    await need(send, "h-end")
    texts.append((await t)["text"])
    states = [h.done() for h in held if hasattr(h, "done")]
    return [texts, fresh, states, [w() is None or w().done() for w in weak]]


async def await_held_future(receive, send):
    """`await fut`, twice, and wait_for(fut) on the held future: each gets
    its result; the receive() gets the message."""
    t, fut = await held_future(receive, send)
    await need(send, "a1")
    first = await fut
    second = await fut
    third = await asyncio.wait_for(fut, 10)
    msg = await t
    return [first, second, third, msg["text"]]


async def await_held_future_from_two_tasks(receive, send):
    """Two other tasks await the held future while receive() waits on it:
    all three wake, only receive() gets the message."""
    t, fut = await held_future(receive, send)

    async def wait_on():
        return await fut

    others = [asyncio.ensure_future(wait_on()) for _ in range(2)]
    await asyncio.sleep(0)
    await need(send, "a2")
    got = await asyncio.gather(*others)
    msg = await t
    return [got, msg["text"]]


async def gather_cancelled_future(receive, send):
    """gather() over the held future once its task was cancelled (which
    cancels the future): with and without return_exceptions."""
    t, fut = await held_future(receive, send)
    t.cancel("gone")
    ended = await how_it_ended(t)
    got = await asyncio.gather(fut, return_exceptions=True)
    got = [[type(e).__name__, list(e.args)] for e in got]
    plain = await how_it_ended(asyncio.wait_for(asyncio.gather(fut), 10))
    await need(send, "a3")
    return [ended, got, plain, (await receive())["text"]]


async def instance_attributes_win(receive, send):
    """Attributes set on the held future hide its methods, as on any
    asyncio.Future; deleted, the methods are back."""
    t, fut = await held_future(receive, send)
    names = ["add_done_callback", "get_loop", "result", "done", "foo"]
    for name in names:
        setattr(fut, name, name + "!")
    seen = [getattr(fut, name) for name in names]
    seen.append(fut.add_done_callback)
    for name in names:
        delattr(fut, name)
    seen.append([callable(getattr(fut, n, None)) for n in names])
    await need(send, "a4")
    return [seen, (await t)["text"]]


async def awaits(fut):
    return await fut


# Endings, not compared with Daphne's shape (the connection or the server
# goes away while the app holds the future): the test checks what the
# client sees and that the server logs no error and exits cleanly.


async def held_when_the_client_closes(receive, send):
    """Tasks await the held future and the receive() when the client
    closes: the receive() gets websocket.disconnect, the others None; a
    done callback on the held future sends (ignored after the disconnect,
    as Daphne does) and another re-enters receive() (which waits: the one
    disconnect went to the first receive(), as with Daphne's queue)."""
    t, fut = await held_future(receive, send)
    others = [asyncio.ensure_future(awaits(fut)) for _ in range(2)]
    late = []

    def sends(f):
        late.append(asyncio.ensure_future(send({"type": "websocket.send", "text": "late"})))

    def reenters(f):
        late.append(asyncio.ensure_future(receive()))

    fut.add_done_callback(sends)
    fut.add_done_callback(reenters)
    await send({"type": "websocket.send", "text": "holding"})
    msg = await t
    got = await asyncio.gather(*others)
    await asyncio.sleep(0.05)
    seen = [msg["type"], got, fut.done(), late[0].result(), late[1].done()]
    late[1].cancel()
    assert seen == ["websocket.disconnect", [None, None], True, None, False], seen
    print("held_when_the_client_closes: ok", file=sys.stderr, flush=True)


async def closes_in_a_done_callback(receive, send):
    """A done callback of the held future closes the connection: the
    receive() still gets its message, the client sees the close."""
    t, fut = await held_future(receive, send)
    fut.add_done_callback(
        lambda f: asyncio.ensure_future(send({"type": "websocket.close", "code": 4001}))
    )
    await need(send, "c1")
    msg = await t
    print("closes_in_a_done_callback:", msg["text"], file=sys.stderr, flush=True)
    await receive()


async def held_at_shutdown(receive, send):
    """Tasks await the held future and the receive() when the server
    shuts down."""
    t, fut = await held_future(receive, send)
    others = [asyncio.ensure_future(awaits(fut)) for _ in range(2)]
    await send({"type": "websocket.send", "text": "holding"})
    msg = await t
    print(
        "held_at_shutdown:", msg["type"], await asyncio.gather(*others), file=sys.stderr, flush=True
    )


async def plain_at_shutdown(receive, send):
    await send({"type": "websocket.send", "text": "holding"})
    print("plain_at_shutdown:", (await receive())["type"], file=sys.stderr, flush=True)


ENDINGS = {
    "plain_at_shutdown": plain_at_shutdown,
    "held_when_the_client_closes": held_when_the_client_closes,
    "closes_in_a_done_callback": closes_in_a_done_callback,
    "held_at_shutdown": held_at_shutdown,
}


async def evil_remove_done_callback(receive, send):
    """remove_done_callback() whose comparisons run app code (once each)
    that changes the callbacks under it (removes them, adds more, cancels
    the receive()'s task, which cancels the future): no crash, and the same
    counts as an asyncio.Future's."""
    t, fut = await held_future(receive, send)
    seen = []

    class Evil:
        def __init__(self, action):
            self.action = action

        def __eq__(self, other):
            action, self.action = self.action, None
            if action is not None:
                action()
            return False

        __hash__ = object.__hash__

        def __call__(self, f):
            seen.append("evil")

    def plain(f):
        seen.append("plain")

    fut.add_done_callback(plain)
    for _ in range(3):
        fut.add_done_callback(Evil(lambda: fut.remove_done_callback(plain)))
    fut.add_done_callback(plain)
    got = [fut.remove_done_callback(Evil(lambda: None))]
    got.append(fut.remove_done_callback(plain))
    for _ in range(3):
        fut.add_done_callback(Evil(lambda: fut.add_done_callback(plain)))
    got.append(exc_type(fut.remove_done_callback, plain))
    fut.add_done_callback(Evil(lambda: t.cancel("inside")))
    fut.add_done_callback(plain)
    got.append(exc_type(fut.remove_done_callback, plain))
    ended = await how_it_ended(t)
    await asyncio.sleep(0)
    await need(send, "e1")
    return [got, ended, seen, fut.cancelled(), (await receive())["text"]]


async def evil_remove_done_callback_keeps(receive, send):
    """remove_done_callback() whose comparisons add or remove callbacks
    keeps the same callbacks, in the same order, as an asyncio.Future's
    (CPython's _asyncio.Future: a one-entry list that matches is dropped
    whole; a longer one is rebuilt from what did not match, which replaces
    the whole list unless it is as long as the list has become)."""
    t, fut = await held_future(receive, send)
    ran = []

    def label(name):
        def cb(f):
            ran.append(name)

        cb.__qualname__ = name
        return cb

    class Evil:
        """Equal to `key` only; the first comparison runs `action`."""

        def __init__(self, name, key, action):
            self.name, self.key, self.action = name, key, action

        def __eq__(self, other):
            action, self.action = self.action, None
            if action is not None:
                action()
            return other is self.key

        __hash__ = object.__hash__

        def __call__(self, f):
            ran.append(self.name)

    key, a, b, c, d = (label(n) for n in "kabcd")
    add = fut.add_done_callback
    counts = []
    # One entry after the task's wake-up, equal, and it adds one more.
    add(Evil("e1", key, lambda: add(a)))
    counts.append(fut.remove_done_callback(key))
    # A longer list: a comparison adds an entry that is equal too.
    add(Evil("e2", None, lambda: add(key)))
    add(b)
    add(key)
    counts.append(fut.remove_done_callback(key))
    # A comparison removes entries before and after the one compared.
    add(c)
    add(Evil("e3", None, lambda: fut.remove_done_callback(c)))
    add(c)
    add(key)
    counts.append(fut.remove_done_callback(key))
    # A comparison removes every entry but the wake-up (a nested call).
    add(d)
    add(Evil("e4", None, lambda: [fut.remove_done_callback(x) for x in list(ran_on)]))
    add(key)
    ran_on = [d]
    counts.append(fut.remove_done_callback(key))
    t.cancel("end")
    ended = await how_it_ended(t)
    await asyncio.sleep(0)
    await need(send, "k1")
    return [counts, ended, ran, (await receive())["text"]]


async def cancel_held_future_directly(receive, send):
    """The app cancels the held future itself (not the receive()'s task):
    the receive() raises CancelledError, as a Queue.get() whose future is
    cancelled does; the next receive() gets the message."""
    t, fut = await held_future(receive, send)
    fut.cancel("direct")
    try:
        await asyncio.wait_for(t, 2)
        outcome = "returned"
    except asyncio.CancelledError as exc:
        outcome = ["cancelled", list(exc.args)]
    except TimeoutError:
        outcome = "still waiting"
    await need(send, "d1")
    return [outcome, t.cancelled(), fut.cancelled(), (await receive())["text"]]


async def call_soon_class_patched_while_waiting(receive, send):
    """call_soon patched on the loop's class while a receive() waits (after
    its first use), then restored: the wake-up goes through the patch, as
    any future's callbacks would; after the restore, no longer."""
    loop = asyncio.get_running_loop()
    cls = type(loop)
    had = "call_soon" in vars(cls)
    original = cls.call_soon
    calls = []

    def call_soon(self, cb, *args, context=None):
        calls.append(getattr(cb, "__qualname__", type(cb).__name__))
        return original(self, cb, *args, context=context)

    t, fut = await held_future(receive, send)
    cls.call_soon = call_soon
    try:
        await need(send, "p1")
        first = (await t)["text"]
    finally:
        if had:
            cls.call_soon = original
        else:
            del cls.call_soon
    woken = len(calls) > 0
    calls.clear()
    t, fut = await held_future(receive, send)
    await need(send, "p2")
    second = (await t)["text"]
    return [woken, calls, first, second, cls.call_soon is original]


SCENARIOS.update(
    {
        f.__name__: f
        for f in (
            await_held_future,
            await_held_future_from_two_tasks,
            gather_cancelled_future,
            instance_attributes_win,
            misuse_before_done,
            callbacks_on_held_future,
            wait_and_shield_on_held_future,
            held_across_messages,
            evil_remove_done_callback,
            evil_remove_done_callback_keeps,
            cancel_held_future_directly,
            call_soon_class_patched_while_waiting,
        )
    }
)
