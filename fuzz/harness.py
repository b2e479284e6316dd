"""The Python half of cdaphne's libFuzzer targets (fuzz/driver.c calls in).

One real cdaphne server per process (the C `Server` on cdaphne's libuv
loop, as cdaphne.server does), listening on a unix socket or on
127.0.0.1. Each input is a script: the bytes are read as a sequence of
ops that write request bytes at fuzzer-chosen split points, step the loop,
let timers fire, half-close or reset the client, and drive the ASGI app
(receive, cancelled receive, send with fuzzer-chosen messages, raise,
return, task cancel). After the script every client is closed and every
app told to return; the server must then drop all its connections and
every app must finish, and what the client read must be well-formed.

Targets:
- one_input_http: HTTP/1.x requests and app actions on up to 3 connections.
- one_input_websocket: a handshake, then frames and app actions.
- one_input_head: response heads and 101 handshakes through the real
  server over status, headers, server name, version, keep-alive, HEAD,
  streamed or one-shot body; the response is parsed and checked.
- one_input_tls: a TLS listener fed garbage, cut and forged records, real
  ClientHellos (whole or in part) and a real TLS client (Python's ssl over
  memory BIOs) that completes handshakes, sends requests, close_notify and
  garbage after the handshake; every connection must still end.

A broken invariant raises FuzzFailure; the driver then aborts and libFuzzer
keeps the input. Reproduce one with `build/fuzz/<target> <file>`; set
CDAPHNE_FUZZ_DEBUG=1 to print the ops as they run.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextvars
import copy
import hashlib
import heapq
import logging
import os
import re
import socket
import struct
import sys
import tempfile
import threading
import time
import warnings
import weakref
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.thread import BrokenThreadPool
from typing import Any

from cdaphne import pubsub
from cdaphne._cdaphne import LoopMethods
from cdaphne._cdaphne import Server as CoreServer
from cdaphne.config import Config
from cdaphne.loop import new_event_loop

# Apps raise on purpose and the server logs it: keep the output quiet.
logging.disable(logging.CRITICAL)
# An app task cancelled while its thread called receive() drops the
# deferred call that thread got (cdaphne._offthread): the app's doing.
warnings.filterwarnings("ignore", "coroutine 'deferred' was never awaited")

DEBUG = os.environ.get("CDAPHNE_FUZZ_DEBUG") == "1"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Seconds to wait for the server to drop every connection after a script.
SETTLE_SECONDS = 3.0
# The loop goes to SCHED_BATCH while thread hops are out (csrc/policy.c):
# checked only when this process runs under the default policy.
POLICY_CHECKED = hasattr(os, "SCHED_BATCH") and os.sched_getscheduler(0) == os.SCHED_OTHER


class FuzzFailure(AssertionError):
    """An invariant of the server broke: the driver aborts on it."""


def log(*args: Any) -> None:
    if DEBUG:
        print("fuzz:", *args, file=sys.stderr)


class Data:
    """Reads the fuzzer's bytes as numbers and strings (zeros once empty)."""

    def __init__(self, data: bytes) -> None:
        self.b = data
        self.i = 0

    def more(self) -> bool:
        return self.i < len(self.b)

    def u8(self) -> int:
        if self.i >= len(self.b):
            return 0
        v = self.b[self.i]
        self.i += 1
        return v

    def u16(self) -> int:
        return self.u8() | (self.u8() << 8)

    def pick(self, seq: Any) -> Any:
        return seq[self.u8() % len(seq)]

    def take(self, n: int) -> bytes:
        out = self.b[self.i:self.i + n]
        self.i += len(out)
        return out

    def blob(self, limit: int = 255) -> bytes:
        """A length byte then that many bytes (a few sizes scale up)."""
        n = self.u8()
        if n >= 250:
            n = (n - 249) * 700
        return self.take(min(n, limit))

    def token(self, limit: int = 32) -> bytes:
        """Usually a valid header name; sometimes any bytes."""
        raw = self.blob(limit)
        if self.u8() & 7:
            return re.sub(rb"[^A-Za-z0-9!#$%&'*+.^_`|~-]", b"x", raw) or b"x-f"
        return raw


# ---- the loop, the servers, the app ----------------------------------------

LOOP: Any = None
TMPDIR = tempfile.mkdtemp(prefix="cdaphne-fuzz-")
SERVERS: dict[Any, Server] = {}
SESSION: Session | None = None
_serial = 0


def loop() -> Any:
    global LOOP
    if LOOP is None:
        LOOP = new_event_loop()
        LOOP.core.sched_batch_during_hops()
        asyncio.set_event_loop(LOOP)
        LOOP.set_exception_handler(_on_loop_error)
    return LOOP


def _on_loop_error(lp: Any, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    if isinstance(exc, AppRaised):
        return
    msg = f"loop error: {context.get('message')} {exc!r}"
    log(msg)
    if SESSION is not None:
        SESSION.errors.append(msg)


class AppRaised(Exception):
    """What the app raises when the script says so."""


class Server:
    """One C server listening on a unix socket or 127.0.0.1:0."""

    def __init__(self, tcp: bool = False, tls: Any = None, **cfg: Any) -> None:
        global _serial
        # Short timers and small limits; every other option is Config's.
        defaults = dict(
            header_timeout=0.03, timeout_keep_alive=0.03, application_close_timeout=0.03,
            websocket_connect_timeout=0.05, websocket_timeout=1.0, ping_interval=0.02,
            ping_timeout=0.03, websocket_max_message_size=4096, websocket_max_frame_size=4096,
            max_header_size=4096, pubsub_max_queue=8192, pubsub_max_topics=3,
            half_close_grace=0.05,
        )
        defaults.update(cfg)
        self.config = Config(app, **defaults)
        self.core = CoreServer(loop().core, app, self.config)
        self.tcp = tcp
        if tcp:
            self.addr = self.core.listen_tcp("127.0.0.1", 0, 128)
        else:
            _serial += 1
            self.addr = os.path.join(TMPDIR, f"s{_serial}")
            self.core.listen_unix(self.addr, 128, tls)
        self.open = True

    def connect(self, bufsize: int = 0) -> socket.socket:
        """bufsize: the client's socket buffers, set before connect (a TCP
        receive window is agreed then): small, they fill soon when the
        client does not read, or when the server does not."""
        fam = socket.AF_INET if self.tcp else socket.AF_UNIX
        s = socket.socket(fam, socket.SOCK_STREAM)
        if bufsize:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, bufsize)
        s.connect(self.addr)
        s.setblocking(False)
        return s


def get_server(key: Any, **cfg: Any) -> Server:
    srv = SERVERS.get(key)
    if srv is None or not srv.open:
        srv = SERVERS[key] = Server(**cfg)
    return srv


class Inst:
    """One running app call; the script posts actions to it."""

    def __init__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.task = asyncio.current_task()
        self.mail: deque[tuple[Any, ...]] = deque()
        self.wake: asyncio.Future[None] | None = None
        self.received: list[dict[str, Any]] = []
        self.body = b""
        self.body_done = False
        self.ws_msgs: list[Any] = []
        self.accepted = False
        self.started = False
        self.busy = False
        self.send_errors = 0
        # receive_held: futures of earlier waits the app keeps (strongly,
        # through a bound method, or weakly), a few at most.
        self.held: deque[Any] = deque(maxlen=4)
        self.keep: deque[Any] = deque(maxlen=4)

    def post(self, action: tuple[Any, ...]) -> None:
        self.mail.append(action)
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)

    async def next(self) -> tuple[Any, ...]:
        while not self.mail:
            self.wake = loop().create_future()
            await self.wake
        self.busy = True
        return self.mail.popleft()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    sess = SESSION
    if sess is None or scope["type"] not in ("http", "websocket"):
        return
    inst = Inst(scope, receive, send)
    sess.insts.append(inst)
    sess.live.append(inst)
    try:
        while True:
            act = await inst.next()
            if act[0] == "return":
                return
            if act[0] == "raise":
                raise AppRaised("the script said raise")
            try:
                await perform(sess, inst, act)
            except (ValueError, TypeError, RuntimeError, KeyError, OSError) as exc:
                log("app action", act[0], "refused:", repr(exc))
                inst.send_errors += 1
            inst.busy = False
    finally:
        sess.live.remove(inst)


async def guarded(sess: Session, inst: Inst, aw: Any, what: str) -> Any:
    """Await receive()/send(); a CancelledError while the task was not
    cancelled means the server reused a cancelled future."""
    try:
        return await aw
    except asyncio.CancelledError:
        assert inst.task is not None
        if inst.task.cancelling() == 0:
            sess.fail(f"{what} raised CancelledError though the task was not cancelled")
        raise


async def do_receive(sess: Session, inst: Inst, timeout: float | None) -> None:
    if timeout is None:
        msg = await guarded(sess, inst, inst.receive(), "receive()")
    else:
        try:
            msg = await guarded(sess, inst, asyncio.wait_for(inst.receive(), timeout),
                                "receive() under wait_for")
        except TimeoutError:
            return
    note_message(sess, inst, msg)


def note_message(sess: Session, inst: Inst, msg: Any) -> None:
    """A message receive() returned: well-formed, and in order."""
    if not isinstance(msg, dict) or "type" not in msg:
        sess.fail(f"receive() returned {msg!r}")
    t = msg["type"]
    if t == "websocket.receive" and (
        type(msg) is not dict or len(msg) != 2 or list(msg)[1] not in ("bytes", "text")
    ):
        sess.fail(f"receive() returned {msg!r}")
    # A copy is kept: the server makes a later message in a dict the app
    # let go of (cycle.c cd_cycle_message), which this one is once changed.
    inst.received.append(dict(msg))
    if t == "http.request":
        if inst.body_done:
            sess.fail("http.request after the last body chunk")
        inst.body += msg.get("body", b"")
        if not msg.get("more_body", False):
            inst.body_done = True
    elif t == "websocket.receive":
        inst.ws_msgs.append(msg.get("bytes") if msg.get("bytes") is not None else msg.get("text"))
        change_message(msg, len(inst.received))


def change_message(msg: dict[str, Any], n: int) -> None:
    """What an app may do to a message it got before it lets go of it."""
    key = "bytes" if "bytes" in msg else "text"
    change = n % 8
    if change == 1:
        msg["extra"] = n
    elif change == 2:
        msg["type"] = msg.pop("type")  # now after the payload
    elif change == 3:
        msg.clear()
    elif change == 4:
        msg[key] = "x"
    elif change == 5:
        msg.pop(key, None)
    elif change == 6:
        msg["type"] = "changed"
    elif change == 7 and key in msg:
        msg["bytes" if key == "text" else "text"] = msg.pop(key)


async def awaits(fut: Any) -> Any:
    return await fut


class HeldFuture:
    """receive_held: the future a waiting receive() yields (its task's
    _fut_waiter, a RecvFuture on this loop), used by the app as any asyncio
    future; what it must then show."""

    def __init__(self, sess: Session, inst: Inst, fut: Any) -> None:
        self.sess = sess
        self.fut = fut
        self.called: list[Any] = []
        self.expected = 0  # done callbacks added and not removed
        self.pending_adds = 0  # of those, added while it was pending
        self.awaiters: list[asyncio.Task[Any]] = []
        if any(fut is h for h in inst.held) or any(w() is fut for w in inst.keep
                                                   if isinstance(w, weakref.ref)):
            sess.fail(f"a waiting receive() yields {fut!r}, which the app still holds")

    def add(self, with_context: bool) -> None:
        if with_context:
            self.fut.add_done_callback(self.called.append, context=contextvars.copy_context())
        else:
            self.fut.add_done_callback(self.called.append)
        self.expected += 1
        self.pending_adds += not self.fut.done()

    def remove(self) -> None:
        n = self.fut.remove_done_callback(self.called.append)
        want = 0 if self.fut.done() else self.pending_adds
        if n != want:
            self.sess.fail(f"remove_done_callback removed {n}, not {want}")
        self.expected -= n
        self.pending_adds -= n

    def remove_adding(self) -> None:
        """remove_done_callback() with a comparand whose first comparison
        adds a callback: nothing is removed, the added one is kept (as an
        asyncio.Future does)."""
        added: list[int] = []
        held = self

        class Adds:
            def __eq__(self, other: object) -> bool:
                if not added:
                    added.append(1)
                    held.add(False)
                return False

            __hash__ = object.__hash__

        n = self.fut.remove_done_callback(Adds())
        if n != 0:
            self.sess.fail(f"remove_done_callback of an unknown callback removed {n}")

    def ask(self) -> None:
        """result() and exception(), as an asyncio.Future answers them."""
        fut = self.fut
        want: Any = (asyncio.InvalidStateError if not fut.done() else
                     asyncio.CancelledError if fut.cancelled() else None)
        for name in ("result", "exception"):
            try:
                got: Any = getattr(fut, name)()
                if got is not None:
                    got = f"returned {got!r}"
            except (asyncio.InvalidStateError, asyncio.CancelledError) as exc:
                got = type(exc)
            if got is not want:
                self.sess.fail(f"{fut!r}.{name}() gave {got!r}, not {want!r}")

    def look(self) -> None:
        fut = self.fut
        if not (asyncio.isfuture(fut) and fut.get_loop() is loop() and repr(fut)):
            self.sess.fail(f"{fut!r} is not a future of the running loop")

    async def check(self) -> None:
        """Once its receive() is over: done; every callback ran once with
        it; every task awaiting it got its result."""
        fut = self.fut
        for _ in range(4):
            await asyncio.sleep(0)
        if not fut.done():
            self.sess.fail(f"{fut!r} still pending after its receive() ended")
            return
        if len(self.called) != self.expected or any(c is not fut for c in self.called):
            self.sess.fail(f"{len(self.called)} done callbacks ran, {self.expected} expected")
        for t in self.awaiters:
            if not t.done():
                self.sess.fail("a task awaiting a done receive() future still waits")
            elif t.cancelled() != fut.cancelled() or (not t.cancelled() and t.result() is not None):
                self.sess.fail(f"a task awaiting {fut!r} ended as {t!r}")


async def receive_held(sess: Session, inst: Inst, ops: bytes) -> None:
    """A receive() in a task of its own whose waiting future the app gets
    hold of and uses as any asyncio future, one op per byte: done callbacks
    added (with or without a context) and removed (also by a comparand that
    adds one), result()/exception()
    asked, awaited by other tasks, kept across later receive()s (strongly,
    through a bound method, weakly, with an attribute set), loop steps,
    a call_soon set on the loop instance or deleted, the receive()'s task
    cancelled or the future itself cancelled.  Then
    the receive() gets its message (noted in order) or, if it still waits,
    is cancelled."""
    t = asyncio.ensure_future(inst.receive())
    held: HeldFuture | None = None
    ours = False  # t or its future cancelled by this script
    n = 0
    patched = False
    try:
        for op in ops:
            fut = getattr(t, "_fut_waiter", None)
            for _ in range(3):
                if fut is not None or t.done():
                    break
                await asyncio.sleep(0)
                fut = getattr(t, "_fut_waiter", None)
            if fut is None:
                break
            n += 1
            if held is None or held.fut is not fut:
                if held is not None:
                    await held.check()
                held = HeldFuture(sess, inst, fut)
            o = op % 12
            if o in (0, 1):
                held.add(o == 1)
            elif o == 2 and op & 64:
                held.remove_adding()
            elif o == 2:
                held.remove()
            elif o == 3:
                held.ask()
            elif o == 4:
                held.awaiters.append(asyncio.ensure_future(awaits(fut)))
            elif o == 5:
                inst.held.append(fut)
            elif o == 6:
                inst.held.append(fut)
                inst.keep.append(fut.add_done_callback)
            elif o == 7:
                inst.keep.append(weakref.ref(fut))
            elif o == 8:
                fut.mark = op
            elif o == 9 and op & 64:
                patched = toggle_call_soon(patched)
            elif o == 9:
                held.look()
                await sess.step(1)
            elif o == 10:
                ours = True
                t.cancel()
                break
            else:
                ours = True
                fut.cancel(op if op & 16 else None)
        done, _ = await asyncio.wait({t}, timeout=0.005)
        if not done:
            ours = True
            t.cancel()
        try:
            msg = await t
        except asyncio.CancelledError:
            if not ours:
                sess.fail("a held receive() raised CancelledError though nothing cancelled it")
            msg = None
        log("receive_held:", n, "ops on", held and held.fut, "then", msg)
        if msg is not None:
            note_message(sess, inst, msg)
        if held is not None:
            await held.check()
        for h in inst.held:
            if not h.done():
                sess.fail(f"{h!r}, held by the app, is pending again")
    finally:
        if patched:
            toggle_call_soon(patched)
        if not t.done():
            t.cancel()


def toggle_call_soon(patched: bool) -> bool:
    """Sets a call_soon on the loop instance (which then schedules every
    future's callbacks, a RecvFuture's too, by name), or deletes it."""
    lp = loop()
    if patched:
        del lp.call_soon
        return False

    def call_soon(cb: Any, *args: Any, context: Any = None) -> Any:
        return type(lp).call_soon(lp, cb, *args, context=context)

    lp.call_soon = call_soon
    return True


async def perform(sess: Session, inst: Inst, act: tuple[Any, ...]) -> None:
    kind = act[0]
    if kind == "receive":
        await do_receive(sess, inst, None)
    elif kind == "receive_held":
        await receive_held(sess, inst, act[1])
    elif kind == "receive_cancel":
        await do_receive(sess, inst, act[1])
    elif kind == "receive_many":
        # Drains a queue that reached its bound (websocket.c
        # queue_check_low parses the frames left behind).
        for _ in range(act[1]):
            n = len(inst.received)
            await do_receive(sess, inst, 0.005)
            if len(inst.received) == n or inst.received[-1]["type"].endswith("disconnect"):
                break
    elif kind == "send":
        await guarded(sess, inst, inst.send(act[1]), "send()")
        t = act[1].get("type") if isinstance(act[1], dict) else None
        if t == "websocket.accept":
            inst.accepted = True
        elif t == "http.response.start":
            inst.started = True
    elif kind == "publish":
        try:
            if isinstance(act[2], str):
                pubsub.publish(act[1], text=act[2])
            else:
                pubsub.publish(act[1], bytes=act[2])
        except TypeError:
            pass  # A bad topic name.
    elif kind == "thread":
        await off_thread(sess, inst, act[1])
    elif kind == "thread_await":
        await awaited_off_thread(sess, inst, act[1])
    elif kind == "waiter":
        await drive_waiter(sess, inst, act[1])
    elif kind == "cancel_message":
        await cancel_message_receive(sess, inst, act[1])
    elif kind == "publish_burst":
        # Past the socket buffers and the queue bound: the subscriber is
        # closed 1013 (pubsub.c deliver, websocket.c cd_ws_close_with).
        for _ in range(act[2]):
            await inst.send({"type": "cdaphne.pubsub.publish", "topic": act[1],
                             "bytes": bytes(65536)})
    elif kind == "send_cancel":
        try:
            await guarded(sess, inst, asyncio.wait_for(inst.send(act[1]), act[2]),
                          "send() under wait_for")
        except TimeoutError:
            pass


async def off_thread(sess: Session, inst: Inst, act: tuple[Any, ...]) -> None:
    """receive() or send() called in another thread (as asgiref's
    async_to_sync does) and what it returns awaited on the loop."""
    if act[0] == "send":
        aw = await asyncio.to_thread(inst.send, act[1])
        await guarded(sess, inst, aw, "send() called off the loop")
        t = act[1].get("type") if isinstance(act[1], dict) else None
        if t == "websocket.accept":
            inst.accepted = True
        elif t == "http.response.start":
            inst.started = True
    else:
        aw = await asyncio.to_thread(inst.receive)
        try:
            msg = await guarded(sess, inst, asyncio.wait_for(aw, 0.005),
                                "receive() called off the loop")
        except TimeoutError:
            return
        note_message(sess, inst, msg)


def await_in_thread(aw: Any) -> BaseException | None:
    """Awaits aw on a loop of this thread's own: what it raised."""
    async def run() -> Any:
        return await aw

    try:
        asyncio.run(run())
    except BaseException as exc:  # noqa: BLE001 - the finding is what it was
        return exc
    return None


def app_message(inst: Inst, how: int) -> dict[str, Any]:
    """A message send() takes on this connection (after the accept or the
    response start)."""
    if inst.scope["type"] == "websocket":
        return {"type": "websocket.send", "bytes": b"t"} if how & 4 else {
            "type": "websocket.send", "text": "t"}
    return {"type": "http.response.body", "body": b"t", "more_body": True}


async def drive_waiter(sess: Session, inst: Inst, how: int) -> None:
    """What receive()/send() return, driven by hand as a task would not:
    closed (twice) before it ran, or sent None, then its future awaited a
    while and sent None again, or closed while it waits.  A receive()'s
    message comes out of StopIteration (noted in order); one closed
    before it gave its message must leave that message for the next."""
    what = "receive" if how & 1 else "send"
    aw = inst.receive() if what == "receive" else inst.send(app_message(inst, how))
    if how & 2:
        aw.close()
        aw.close()
        return
    it = aw.__await__()
    for _ in range(3):
        try:
            fut = it.send(None)
        except StopIteration as stop:
            if what == "receive":
                note_message(sess, inst, stop.value)
            return
        if fut is None or not how & 8:
            break
        fut._asyncio_future_blocking = False
        await asyncio.wait({fut}, timeout=0.005)
        if not fut.done():
            break
    it.close()


async def awaited_off_thread(sess: Session, inst: Inst, how: int) -> None:
    """receive()/send() awaited in another thread: made there (a deferred
    call) or on the loop (the waiter); either must raise RuntimeError there
    and leave the connection as it was."""
    what = "receive" if how & 1 else "send"
    msg = app_message(inst, how)
    if how & 2:
        def made_there() -> BaseException | None:
            return await_in_thread(inst.receive() if what == "receive" else inst.send(msg))
        exc = await asyncio.to_thread(made_there)
    else:
        aw = inst.receive() if what == "receive" else inst.send(msg)
        exc = await asyncio.to_thread(await_in_thread, aw)
        if what == "send":
            # A send() waiter made on the loop did its work when called.
            return
    if not isinstance(exc, RuntimeError):
        sess.fail(f"{what}() awaited off the loop's thread gave {exc!r}, not RuntimeError")


class Conn:
    """A client socket: bytes still to write, bytes read."""

    def __init__(self, srv: Server, ws: bool = False, bufsize: int = 0) -> None:
        self.sock: socket.socket | None = srv.connect(bufsize)
        self.tcp = srv.tcp
        self.local = tuple(self.sock.getsockname()) if srv.tcp else None
        self.pending = bytearray()
        self.out = bytearray()
        self.eof = False
        self.wr_closed = False
        # A WebSocket client checks the frames after a 101 as they arrive,
        # so that out keeps only the head (megabytes of frames would
        # otherwise have to be kept whole to be parsed at the end).
        self.frames: FrameScanner | None = FrameScanner() if ws else None
        # permessage-deflate: what the handshake offered (None: nothing),
        # and the client's compressor while it keeps its context.
        self.offer: bytes | None = None
        self.deflater: Any = None

    def write(self, n: int) -> None:
        if self.sock is None or self.wr_closed or not self.pending:
            return
        chunk = bytes(self.pending[:n] if n else self.pending)
        try:
            sent = self.sock.send(chunk)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.wr_closed = True
            return
        del self.pending[:sent]

    def pump(self) -> None:
        while self.sock is not None and not self.eof:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.eof = True
                return
            if not data:
                self.eof = True
                return
            if self.frames is not None and self.frames.active:
                self.frames.feed(data)
                continue
            self.out += data
            if self.frames is not None:
                self._start_frames()
            elif len(self.out) > 4 << 20:
                # An HTTP client checks the head and small bodies only:
                # keep the start, drop the bulk.
                del self.out[1 << 20:]

    def _start_frames(self) -> None:
        """Once the 101 head is in, the bytes after it go to the scanner."""
        assert self.frames is not None
        end = self.out.find(b"\r\n\r\n")
        if end >= 0 and not self.out.startswith(b"HTTP/1.1 101 "):
            self.frames = None  # Refused: an HTTP response, no frames.
        if end < 0 or self.frames is None:
            if len(self.out) > 4 << 20:
                del self.out[1 << 20:]
            return
        rest = bytes(self.out[end + 4:])
        del self.out[end + 4:]
        self.frames.deflate = b"\r\nsec-websocket-extensions: permessage-deflate" in self.out
        self.frames.active = True
        self.frames.feed(rest)

    def half_close(self) -> None:
        if self.sock is not None and not self.wr_closed:
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self.wr_closed = True

    def reset(self) -> None:
        if self.sock is None:
            return
        if self.tcp:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()
        self.sock = None

    def close(self) -> None:
        if self.sock is not None:
            self.pump()
            self.sock.close()
            self.sock = None


class Timers:
    """Timers on the server's loop, scheduled, cancelled, copied and edited
    as Python code may (asyncio's `_when`, `_scheduled` and heap are
    public enough that libraries touch them): sched.c keeps its own copy
    of the heap's keys, which must follow.  A cancelled timer never runs
    and none runs twice."""

    def __init__(self, sess: Session) -> None:
        self.sess = sess
        self.handles: list[Any] = []
        self.runs: list[int] = []

    def ran(self, i: int) -> None:
        self.runs.append(i)
        if self.handles[i].cancelled():
            self.sess.fail(f"timer {i} ran after its cancel()")
        if self.runs.count(i) > 1:
            self.sess.fail(f"timer {i} ran twice")

    def op(self, d: Data) -> None:
        lp = loop()
        kind = d.u8() % 6
        if kind == 0 or not self.handles:
            delay = (d.u8() - 16) / 1000  # -16 to 239 ms
            log("timer call_later", delay)
            self.handles.append(lp.call_later(delay, self.ran, len(self.handles)))
            return
        h = d.pick(self.handles)
        log("timer op", kind, h)
        if kind == 1:
            h.cancel()
        elif kind == 2:
            c = copy.copy(h)
            if d.u8() & 1:
                c.cancel()  # The original stays scheduled.
        elif kind == 3 and h in lp._scheduled:
            # A deadline moved in place, then the heap mended (an int key
            # takes the copy's slow path).
            n = d.u8()
            h._when = lp.time() + n / 1000 if n & 1 else int(lp.time()) + n % 4
            heapq.heapify(lp._scheduled)
        elif kind == 4:
            # Made and pushed as asyncio's call_at does in Python.
            cls = type(h) if d.u8() & 1 else asyncio.TimerHandle
            t = cls(lp.time() + d.u8() / 1000, self.ran, (len(self.handles),), lp)
            self.handles.append(t)
            heapq.heappush(lp._scheduled, t)
            t._scheduled = True
        elif kind == 5 and h in lp._scheduled:
            lp._scheduled.remove(h)
            heapq.heapify(lp._scheduled)
            h._scheduled = False

    def close(self) -> None:
        for h in self.handles:
            h.cancel()


class Session:
    """The state of one input."""

    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.insts: list[Inst] = []
        self.live: list[Inst] = []
        self.conns: list[Conn] = []
        self.errors: list[str] = []
        self.failures: list[str] = []
        self.renew_loop = False
        self.timers = Timers(self)

    def fail(self, msg: str) -> None:
        log("FAILURE", msg)
        self.failures.append(msg)

    async def inst(self, d: Data) -> Inst | None:
        """The app an action goes to; gives a request a few loop turns to
        reach its app first."""
        k = d.u8()  # Read even when no app runs: inputs stay aligned.
        for _ in range(6):
            if self.live:
                break
            await self.step(1)
        if not self.live:
            return None
        return self.live[k % len(self.live)]

    async def step(self, n: int = 1) -> None:
        for _ in range(n):
            await asyncio.sleep(0)
        for c in self.conns:
            c.pump()

    async def sleep(self, ms: float) -> None:
        await asyncio.sleep(ms / 1000)
        for c in self.conns:
            c.pump()

    async def settle(self) -> None:
        """Close clients, let apps return, wait for the server to drop all."""
        self.timers.close()
        for c in self.conns:
            c.close()
        deadline = time.monotonic() + SETTLE_SECONDS
        spins = 0
        while self.live or self.srv.core.connections:
            for inst in list(self.live):
                if not inst.mail:
                    inst.post(("return",))
            spins += 1
            if spins < 20:
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(0.002)
            if time.monotonic() > deadline:
                break
        if self.srv.core.connections:
            self.fail(f"{self.srv.core.connections} server connection(s) left "
                      f"{SETTLE_SECONDS}s after every client closed "
                      f"(apps still running: {len(self.live)})")
        elif self.live:
            self.fail(f"{len(self.live)} app(s) still running after their connections closed")
        elif POLICY_CHECKED and not await self.policy_default(time.monotonic() + SETTLE_SECONDS):
            self.fail("the loop's thread stayed under SCHED_BATCH with no thread hop out")
        if not self.srv.open:
            # The script closed the listeners: this server is done.
            self.srv.core.close_all()
            await asyncio.sleep(0)

    async def policy_default(self, deadline: float) -> bool:
        """Whether the loop, sleeping once its apps are gone, is back under
        the default policy (policy.c; a cancelled app's worker may still
        run its hop for a while)."""
        while True:
            await asyncio.sleep(0.002)
            if os.sched_getscheduler(0) == os.SCHED_OTHER:
                return True
            if time.monotonic() > deadline:
                return False

    def finish(self) -> None:
        if self.failures:
            raise FuzzFailure("; ".join(self.failures))


class WhenTimers:
    """Timers of loop.call_later/call_at whose _when the app reads, lowers,
    replaces by an int, deletes and puts back (sched.c keeps a copy of the
    heap's _when: cd_timer_when_writes tells it they changed).  Only
    lowered: asyncio's heap assumes a key never grows in it, and a
    grown first timer would hold back the script's own sleeps."""

    def __init__(self, sess: Session) -> None:
        self.sess = sess
        self.handles: list[Any] = []
        self.ran: list[int] = []
        self.cancelled: set[int] = set()
        self.changed: set[int] = set()

    def add(self, b: int) -> None:
        lp = loop()
        i = len(self.handles)
        delay = (b >> 3) * 0.0005
        if b & 4:
            h = lp.call_at(lp.time() + delay, self.ran.append, i)
        else:
            h = lp.call_later(delay, self.ran.append, i)
        self.handles.append(h)

    def change(self, i: int, b: int) -> None:
        h = self.handles[i]
        o = b % 4
        if o == 0:
            if h._when != h.when() or not isinstance(h._when, float | int):
                self.sess.fail(f"timer _when {h._when!r} but when() {h.when()!r}")
        elif o == 1:
            h._when = h._when - (b >> 2) * 0.0002
            self.changed.add(i)
        elif o == 2:
            h._when = int(h._when)  # Lower: floor of a positive time.
            self.changed.add(i)
        else:
            self.delete(h)

    def delete(self, h: Any) -> None:
        """del _when, read it and del it again (AttributeError both
        times), then put it back before the loop sees the heap."""
        when = h._when
        del h._when
        for what in ("read", "del"):
            try:
                if what == "read":
                    h._when  # noqa: B018 - the read is the point
                else:
                    del h._when
            except AttributeError:
                continue
            self.sess.fail(f"a timer with _when deleted: {what} did not raise AttributeError")
        h._when = when

    async def finish(self) -> None:
        """Every timer ran at most once, never after its cancel, and each
        one left alone ran once its time came."""
        lp = loop()
        due = [h.when() for i, h in enumerate(self.handles)
               if i not in self.cancelled and i not in self.changed]
        if due:
            await asyncio.sleep(max(0.0, max(due) - lp.time()) + 0.001)
        for i, h in enumerate(self.handles):
            n = self.ran.count(i)
            if n > 1 or (i in self.cancelled and n) or (
                    n == 0 and i not in self.cancelled and i not in self.changed):
                self.sess.fail(f"timer {i} ran {n} times (cancelled: {i in self.cancelled}, "
                               f"_when changed: {i in self.changed})")
            if not n:
                h.cancel()
                self.cancelled.add(i)


async def when_timers(sess: Session, ops: bytes) -> None:
    """A few loop timers the script makes, changes, cancels and steps
    past, one op per byte."""
    t = WhenTimers(sess)
    for b in ops:
        o = b % 5
        if o == 0 or not t.handles:
            t.add(b)
        elif o == 1:
            t.change(b % len(t.handles), b >> 3)
        elif o == 2:
            i = (b >> 2) % len(t.handles)
            if i not in t.cancelled and t.ran.count(i) == 0:
                t.handles[i].cancel()
                t.cancelled.add(i)
        elif o == 3:
            await sess.step(1)
        else:
            await sess.sleep(1 + (b >> 6))
    log("timers:", len(t.handles), "made,", len(t.ran), "ran")
    await t.finish()


def renew_loop() -> None:
    """Closes every server and the loop: the next input makes new ones."""
    global LOOP
    lp = LOOP
    if lp is None:
        return
    for srv in SERVERS.values():
        srv.core.close_all()
        if srv.open:
            srv.core.close_listeners()
            srv.open = False

    async def drain() -> None:
        for _ in range(4):
            await asyncio.sleep(0)

    lp.run_until_complete(drain())
    SERVERS.clear()
    lp.close()
    LOOP = None
    log("loop closed")


def run_script(srv: Server, script: Any, d: Data) -> Session:
    global SESSION
    sess = SESSION = Session(srv)

    async def main() -> None:
        try:
            await script(sess, d)
        finally:
            await sess.settle()

    try:
        loop().run_until_complete(main())
    finally:
        SESSION = None
    if sess.renew_loop:
        renew_loop()
    return sess


# ---- response sanity ---------------------------------------------------

HEAD_RE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n\x00]*\r\n")
FIELD_RE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([^\r\n\x00]*)\r\n")


def parse_head(buf: bytes) -> tuple[int, list[tuple[bytes, bytes]], int] | None:
    """(status, headers, head length) of the head at the start of buf, None
    if it is not complete yet; raises ValueError if it is malformed."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > 1 << 20:
            raise ValueError("no end of head in 1 MiB")
        if buf and not b"HTTP/1.1 ".startswith(buf[:9]):
            raise ValueError(f"not a status line: {bytes(buf[:40])!r}")
        return None
    m = HEAD_RE.match(buf)
    if m is None:
        raise ValueError(f"bad status line: {bytes(buf[:80])!r}")
    pos = m.end()
    headers = []
    while pos < end + 2:
        f = FIELD_RE.match(buf, pos)
        if f is None or f.end() > end + 2:
            raise ValueError(f"bad header line: {bytes(buf[pos:pos + 80])!r}")
        headers.append((f.group(1).lower(), f.group(2).rstrip(b" \t")))
        pos = f.end()
    return int(m.group(1)), headers, end + 4


def check_first_response(sess: Session, c: Conn) -> None:
    if not c.out:
        return
    try:
        parse_head(bytes(c.out))
    except ValueError as exc:
        sess.fail(f"malformed response: {exc}")


# ---- HTTP requests -----------------------------------------------------------

METHODS = [b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS", b"DELETE"]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2",
            b"HTTP/0.9"]
TOKEN_RE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


# One chunk's extension bytes the server takes, and the framing between
# two chunks' data (http1.c CD_HTTP1_MAX_CHUNK_EXT, _FRAMING).
MAX_CHUNK_EXT = 16 * 1024
MAX_CHUNK_FRAMING = MAX_CHUNK_EXT + 1024


def chunk_line(d: Data, size: int, x: int) -> tuple[bytes, bool]:
    """A chunk-size line without its CRLF, and whether the server must
    take it: x 14 puts leading zeros before the size (both sides of the
    bound), else chunk_ext picks the extensions."""
    digits = b"%x" % size
    if x == 14:
        n = d.u8() * 80
        # CRLF before, CRLF after, and the head's CRLFs for a first chunk.
        return b"0" * n + digits, n + len(digits) + 8 <= MAX_CHUNK_FRAMING
    ext, ok = chunk_ext(d, x)
    return digits + ext, ok


def chunk_ext(d: Data, x: int) -> tuple[bytes, bool]:
    """A chunk's extensions, and whether the server must take them: the
    byte x picks none (mostly), a name, a name and value, a quoted value,
    several names, a long name around the bound, name=value pairs after the
    first (llhttp 8.1 refused those; http1.c feeds it the ';' it skipped),
    a list of the fuzzer's names and token or quoted values, or many
    ";a=b" around the bound."""
    if x == 7:
        return b";x=y", True
    if x == 8:
        return b";x", True
    if x == 10:
        return b';q="' + re.sub(rb"[^A-Za-z0-9 ]", b"", d.blob(40)) + b'"', True
    if x == 11:
        return b";a;b" * (1 + d.u8() % 8), True
    if x == 12:
        n = d.u8() * 80  # up to 20,400 bytes: both sides of the bound
        return b";" + b"e" * n, 1 + n <= MAX_CHUNK_EXT
    if x == 13:
        return b";a=b;c=d", True
    if x == 15:
        return ext_list(d), True
    if x == 16:
        n = d.u8() * 20  # 4 bytes each: up to 20,400 bytes
        return b";a=b" * n, 4 * n <= MAX_CHUNK_EXT
    return b"", True


def ext_list(d: Data) -> bytes:
    """1 to 12 valid extensions: names and token values from the fuzzer's
    bytes (as tchars), quoted values (as qdtext), or no value."""
    out = b""
    for _ in range(1 + d.u8() % 12):
        out += b";" + (re.sub(rb"[^A-Za-z0-9!#$%&'*+.^_`|~-]", b"", d.blob(8)) or b"n")
        kind = d.u8() % 3
        if kind == 1:
            out += b"=" + (re.sub(rb"[^A-Za-z0-9!#$%&'*+.^_`|~-]", b"", d.blob(8)) or b"v")
        elif kind == 2:
            out += b'="' + re.sub(rb'[^ !#-\[\]-~]', b"", d.blob(8)) + b'"'
    return out


# build_request's body for a request that is valid but for chunk framing
# past a bound (x 12, 14 or 16 in chunk_line): its app must never see the
# body end (a last chunk's size line measured, in one read or many).
REFUSED = b"\0refused"


def build_request(d: Data, ws: bool = False) -> tuple[bytes, bytes | None]:
    """A request from the fuzzer's choices; returns (bytes, body) where body
    is the exact body the app must receive, REFUSED, or None if the request
    is not a plain valid one."""
    clean = True
    over = False
    sel = d.u8()
    if sel < 230:
        method = METHODS[sel % len(METHODS)]
    else:
        method, clean = d.token(12), False
    target = b"/" + re.sub(rb"[^!-~]", b"_", d.blob(40))
    if d.u8() < 8:
        target, clean = d.blob(60), False
    v = d.u8()
    version = VERSIONS[v % len(VERSIONS)] if v < 240 else d.blob(12)
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        clean = False
    lines = [method + b" " + target + b" " + version]
    host = 1 if version == b"HTTP/1.1" else 0
    body = b""
    framing = "none"
    n = d.u8() % 8
    for _ in range(n):
        h = d.u8() % 16
        if h == 0:
            host += 1
        elif h == 1:
            framing = "cl"
        elif h == 2:
            framing = "chunked"
        elif h == 3:
            lines.append(b"Connection: " + d.pick([b"close", b"keep-alive", b"upgrade", b"x"]))
        elif h == 4:
            lines.append(b"Expect: 100-continue")
        elif h == 5:
            bad = d.pick([b"0", b"5", b"-1", b"1x", b"99999999999999999999"])
            lines.append(b"Content-Length: " + bad)
            clean = False
        elif h == 6:
            te = [b"chunked", b"gzip", b"chunked, gzip", b"gzip, chunked", b"Chunked"]
            lines.append(b"Transfer-Encoding: " + d.pick(te))
            clean = False
        elif h == 7:
            lines.append(b"X-Long: " + b"v" * (d.u8() * 40))
        elif h == 8:
            # Many small fields (count limits, header amplification).
            lines += [b"a:"] * (d.u8() * 4)
        elif h == 9:
            name, value = d.token(), d.blob(60)
            lines.append(name + b": " + value)
            if not TOKEN_RE.fullmatch(name) or re.search(rb"[\r\n\x00]", value):
                clean = False
        elif h == 10:
            lines.append(b"Cookie: a=b; c=" + d.blob(20).replace(b"\r", b"").replace(b"\n", b""))
        elif h == 11:
            lines.append(b"Upgrade: websocket")
            clean = clean and ws
        else:
            lines.append(b"X-F" + str(h).encode() + b": " + re.sub(rb"[\r\n\x00]", b"", d.blob(20)))
    if host > 0:
        lines[1:1] = [b"Host: example.com"] * host
    if host != (1 if version == b"HTTP/1.1" else host):
        clean = False
    if framing != "none":
        body = d.blob(300)
    if framing == "cl":
        lines.append(b"Content-Length: %d" % len(body))
        tail = body
    elif framing == "chunked":
        if version == b"HTTP/1.0":
            clean = False
        lines.append(b"Transfer-Encoding: chunked")
        tail = b""
        rest = body
        while rest:
            k = max(1, d.u8() % 64)
            part, rest = rest[:k], rest[k:]
            x = d.u8()
            line, ok = chunk_line(d, len(part), x)
            over = over or (not ok and x in (12, 14, 16))
            clean = clean and (ok or x in (12, 14, 16))
            tail += line + b"\r\n" + part + b"\r\n"
        x = d.u8()
        trailer = b"X-Trailer: 1\r\n" if x == 9 else b""
        line, ok = chunk_line(d, 0, x)
        over = over or (not ok and x in (12, 14, 16))
        clean = clean and (ok or x in (12, 14, 16))
        tail += line + b"\r\n" + trailer + b"\r\n"
    else:
        tail = b""
    if ws:
        clean = False
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    if not clean:
        return head + tail, None
    return head + tail, REFUSED if over else body


def app_http_action(d: Data) -> tuple[Any, ...]:
    b = d.u8()
    if b >= 248:
        return app_thread_action(d, b, app_http_action)
    a = b % 16
    if a in (0, 1):
        return ("receive",)
    if a == 2:
        return ("receive_many", 1 + d.u8())
    if a == 3:
        return ("receive_cancel", d.pick([0, 0, 0.001, 0.005]))
    if a in (4, 5):
        status = d.pick([200, 200, 204, 304, 101, 100, 404, 431, 500, 999, 1000, 99])
        if d.u8() == 1:
            status = d.u16()
        return ("send", {"type": "http.response.start", "status": status,
                         "headers": app_headers(d)})
    if a in (6, 7, 8):
        return ("send", {"type": "http.response.body", "body": d.blob(2000),
                         "more_body": bool(d.u8() & 1)})
    if a == 9:
        return ("send_cancel", {"type": "http.response.body", "body": b"x" * (d.u8() << 12),
                                "more_body": True}, d.pick([0, 0.001]))
    if a == 10:
        return ("send", bad_message(d))
    if a == 11:
        return ("raise",)
    if a == 12:
        return ("return",)
    if a == 13:
        return ("cancel",)
    if a == 14:
        return ("send", {"type": "http.response.trailers", "headers": [], "more_trailers": False})
    return ("receive",)


def app_thread_action(d: Data, b: int, choose: Any) -> tuple[Any, ...]:
    """An app calling receive()/send() off the loop's thread: a send or
    receive of `choose` done through a thread, or awaited in one."""
    if b % 4 == 1:
        return ("thread_await", d.u8())
    if b % 4 == 2:
        return ("waiter", d.u8())
    act = choose(d)
    if act[0] == "send":
        return ("thread", act)
    return ("thread", ("receive",))


def app_headers(d: Data) -> list[Any]:
    out: list[Any] = []
    for _ in range(d.u8() % 6):
        k = d.u8() % 12
        if k == 0:
            out.append((b"content-length", d.pick([b"0", b"3", b"100", b"x", b"", b"-1",
                                                   b"+3", b" 3\t", b"\x0b3", b"3, 3",
                                                   b"99999999999999999999"])))
        elif k == 1:
            out.append((b"transfer-encoding", d.pick([b"chunked", b"chunked", b"gzip",
                                                      b"gzip, chunked", b"chunked, chunked",
                                                      b"Chunked ", b"xchunked"])))
        elif k == 2:
            out.append((b"connection", d.pick([b"close", b"keep-alive", b"Close, x", b"closed",
                                               b"x-close, Keep-Alive", b"keep-alive,close",
                                               b" , keep-alive ,"])))
        elif k == 3:
            out.append((b"server", d.blob(40)))
        elif k == 4:
            out.append((b"date", b"Thu, 01 Jan 1970 00:00:00 GMT"))
        elif k == 5:
            out.append((d.blob(20), d.blob(40)))  # Anything, even CR/LF.
        elif k == 6:
            out.append([b"x-list", b"v"])
        elif k == 7:
            out.append((b"x-big", b"b" * (d.u8() * 64)))
        elif k == 8:
            out.append(("x-str", "v"))
        elif k == 9:
            # The server answers the extension offer: it drops this one.
            # A 101 names one subprotocol: the key's, else the app's first.
            if d.u8() & 1:
                out.append((b"Sec-WebSocket-Protocol", d.pick([b"chat", b"x", b" x\t"])))
            else:
                out.append((b"Sec-WebSocket-Extensions",
                            d.pick([b"permessage-deflate", b"x-custom", b""])))
        else:
            out.append((d.token(), re.sub(rb"[\r\n\x00]", b"", d.blob(40))))
    return out


def bad_message(d: Data) -> Any:
    return d.pick([
        {"type": "http.response.start"},
        {"type": "http.response.start", "status": "200"},
        {"type": "http.response.start", "status": 200, "headers": 5},
        {"type": "http.response.start", "status": 200, "headers": [(b"a",)]},
        {"type": "http.response.body", "body": "str"},
        {"type": "http.response.body", "more_body": 2},
        {"type": "unknown"},
        {"no": "type"},
        ["not", "a", "dict"],
        {"type": "websocket.send", "text": "x"},
        {"type": "websocket.accept"},
        {"type": "websocket.close", "code": 1000},
    ])


async def app_op(sess: Session, d: Data, choose: Any) -> None:
    """One app action drawn by `choose` for one of the running apps:
    cancel its task, or post the action for the app to perform."""
    inst = await sess.inst(d)
    act = choose(d)
    if inst is None:
        return
    if act[0] == "cancel":
        if inst.task is not None:
            inst.task.cancel()
        return
    log("app", act)
    inst.post(act)
    await sess.step(1)


class Boom(Exception):
    """What a script's executor function raises."""


def _init_fails(gate: threading.Event) -> None:
    # Fails only once the work is queued, so that it is the queued work
    # the broken pool fails (set_exception), not the submits.
    gate.wait(5)
    raise Boom("initializer")


async def _hop_outcome(fut: Any) -> Any:
    try:
        return await asyncio.wait_for(fut, 5)
    except (Boom, BrokenThreadPool, asyncio.CancelledError) as exc:
        return type(exc)


async def executor_op(sess: Session, b: int) -> None:
    """Work handed to a thread pool ends as the app's future says (hop.c):
    a result, the function's exception, a cancel of queued work by
    shutdown(cancel_futures=True), a pool broken by its initializer, or
    the work of an executor of another kind (hop.c cd_hop_wrap)."""
    lp = loop()
    kind = b % 4
    log("executor op", kind)
    if kind in (0, 1):
        gate = threading.Event()
        ex = ThreadPoolExecutor(max_workers=1, initializer=_init_fails if kind else None,
                                initargs=(gate,) if kind else ())
        running = threading.Event()
        first = lp.run_in_executor(ex, _hold, running, gate)
        queued = [lp.run_in_executor(ex, pow, 2, i) for i in range(1 + (b >> 2) % 4)]
        if not kind:
            # The first is running, the rest queued: only they are cancelled.
            running.wait(5)
            ex.shutdown(wait=False, cancel_futures=True)
        gate.set()
        got = [await _hop_outcome(f) for f in (first, *queued)]
        ex.shutdown(wait=True)
        log("executor work ended", got)
        # A broken pool fails all its work; shutdown cancels the queued only.
        cancelled = [asyncio.CancelledError] * len(queued)
        want = [BrokenThreadPool] * len(got) if kind else [True, *cancelled]
        if got != want:
            what = "a broken pool's work" if kind else "work cancelled by shutdown"
            sess.fail(f"{what} ended {got!r}")
    elif kind == 2:
        got = await _hop_outcome(lp.run_in_executor(None, _raise_or_return, b))
        log("executor work ended", got)
        if got != (Boom if b & 4 else b):
            sess.fail(f"run_in_executor of {b} gave {got!r}")
    else:
        # Not a ThreadPoolExecutor: the loop hops on the concurrent future
        # submit() returns (of the plain class or not), done later on a
        # thread, cancelled from the loop first, or done within submit().
        cancel, at_once = b & 20 == 16, b & 20 == 20
        ex = HandExecutor(plain=bool(b & 8), at_once=at_once)
        fut = lp.run_in_executor(ex, _raise_or_return, b)
        if cancel:
            fut.cancel()
            await sess.step(1)
        ex.start()
        got = await _hop_outcome(fut)
        ex.join()
        log("hand executor's work ended", got)
        if got != (asyncio.CancelledError if cancel else Boom if b & 4 else b):
            sess.fail(f"work of an executor of another kind ({b}) ended {got!r}")


class OtherFuture(concurrent.futures.Future):
    """A concurrent future of another class than the plain one."""


class HandExecutor(concurrent.futures.Executor):
    """An executor that is not a ThreadPoolExecutor: each submit() gets its
    own thread, started by start(), or runs within submit()."""

    def __init__(self, plain: bool, at_once: bool) -> None:
        self.plain, self.at_once = plain, at_once
        self.threads: list[threading.Thread] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        f = concurrent.futures.Future() if self.plain else OtherFuture()

        def work() -> None:
            if f.set_running_or_notify_cancel():
                try:
                    f.set_result(fn(*args, **kwargs))
                except BaseException as exc:  # noqa: BLE001 - as the pool does
                    f.set_exception(exc)
        if self.at_once:
            work()
        else:
            self.threads.append(threading.Thread(target=work))
        return f

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        for t in self.threads:
            t.join(5)


def _hold(running: threading.Event, gate: threading.Event) -> bool:
    running.set()
    return gate.wait(5)


def _raise_or_return(b: int) -> int:
    if b & 4:
        raise Boom(b)
    return b


# ---- introspect_op: the loop's own structures, used as Python code does ----

# How long unsettable_op waits for the loop's report (tests lower it).
REPORT_SECONDS = 5.0
# Methods LoopMethods has in C (csrc/loopmeth.c lm_defs) whose unbound call
# does its work and nothing else to the loop: the callback it must run, or
# the value it must give, is checked (loop_method_op).
LOOP_METHODS = ("call_soon", "call_soon_threadsafe", "call_later", "call_at", "create_future",
                "create_task", "run_in_executor")


class Refused(Exception):
    """What an Unsettable future raises when it is completed."""


class Unsettable(asyncio.Future):
    """A loop future whose set_result/set_exception raise: what a
    create_future override returns, run_in_executor's completion of it
    fails and is reported (hop.c hop_report)."""

    def set_result(self, result: Any) -> None:
        raise Refused("set_result")

    def set_exception(self, exception: Any) -> None:
        raise Refused("set_exception")


async def introspect_op(sess: Session, d: Data, b: int) -> None:
    """An app that introspects and edits the loop's own structures, as
    asyncio's own code, its tests and real apps do (b % 5): the ready
    queue (readyq.c), the loop's methods seen as functions (loopmeth.c),
    the timer heap edited with heapq (sched.c), a future's
    _cancel_message (recvfut.c for receive()'s), a run_in_executor()
    future that cannot take its outcome (hop.c hop_report).  Each
    outcome is checked as stock asyncio's loop gives it."""
    kind, v = b % 5, b // 5
    log("introspect op", kind, v)
    if kind == 0:
        await ready_queue_op(sess, v)
    elif kind == 1:
        await loop_method_op(sess, LOOP_METHODS[v % len(LOOP_METHODS)])
    elif kind == 2:
        await timer_heap_op(sess, v)
    elif kind == 3:
        # On a loop future, then (when an app runs) on what its waiting
        # receive() yields: a RecvFuture on ours.
        await cancel_message_op(sess, loop().create_future(), None, v)
        inst = await sess.inst(d)
        if inst is not None:
            inst.post(("cancel_message", v))
            await sess.step(1)
    else:
        await unsettable_op(sess, v)


def _pop_own(ready: Any, h: Any) -> Any:
    """ready.pop() of h, which this thread appended last: what another
    thread's call_soon_threadsafe appended since (not before h) is popped
    first and put back after."""
    snap = list(ready)
    ahead = snap[:next((i for i, x in enumerate(snap) if x is h), len(snap))]
    late = []
    got = ready.pop()
    while got is not h and ready and len(late) < 64 and not any(x is got for x in ahead):
        late.append(got)
        got = ready.pop()
    for x in reversed(late):
        ready.append(x)
    return got


async def ready_queue_op(sess: Session, v: int) -> None:
    """loop._ready used as the deque asyncio's code and tests use: len,
    iteration, indexing (out of range: IndexError), repr, a Handle appended
    and another appended left (it runs before what was queued), a
    cancelled one appended (v & 1: never runs), and, of what the op put
    there itself, pop() and popleft() (v & 2: they never run).  Only the
    loop's thread takes from the left end: other threads append on the
    right."""
    lp = loop()
    ready = lp._ready
    ran: list[str] = []

    def handle(name: str) -> asyncio.Handle:
        return asyncio.Handle(ran.append, (name,), lp)

    lp.call_soon(ran.append, "queued")
    if not any(getattr(h, "_callback", None) == ran.append for h in ready):
        sess.fail(f"_ready does not hold the handle call_soon() queued: {ready!r}")
    a, first = handle("appended"), handle("appended left")
    before = list(ready)
    n = len(before)
    ready.append(a)
    ready.appendleft(first)
    after = list(ready)
    # Only the left end is the loop thread's alone: what another thread
    # appended since may come before a.
    if (ready[0] is not first or len(ready) < n + 2 or a not in ready
            or any(x is not y for x, y in zip(after[1:n + 1], before, strict=False))
            or not any(h is a for h in after[n + 1:])):
        sess.fail(f"_ready after appendleft() and append(): {after!r}, before: {before!r}")
    last = ready[-1]
    if not any(h is last for h in list(ready)[n + 1:]):
        sess.fail(f"_ready[-1] is {last!r}, not what append() put last")
    if repr(a) not in repr(ready) or repr(first) not in repr(ready):
        sess.fail(f"repr(_ready) lacks what was put there: {ready!r}")
    for i in (len(ready) + 100, -len(ready) - 100):
        try:
            ready[i]
        except IndexError:
            continue
        sess.fail(f"_ready[{i}] of {len(ready)} did not raise IndexError")
    never = []
    if v & 1:
        c = handle("cancelled")
        c.cancel()
        ready.append(c)
        never.append("cancelled")
    if v & 2:
        # Put there and taken back: each end's own.
        left, right = handle("popped left"), handle("popped")
        ready.appendleft(left)
        got = ready.popleft()
        if got is not left:
            sess.fail(f"_ready.popleft() gave {got!r}, not the handle appendleft() put")
        ready.append(right)
        got = _pop_own(ready, right)
        if got is not right:
            sess.fail(f"_ready.pop() gave {got!r}, not the handle append() put")
        never += ["popped left", "popped"]
    want = ["appended left", "queued", "appended"]
    for _ in range(6):
        if len(ran) >= len(want):
            break
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    if ran != want:
        sess.fail(f"handles put on _ready ran as {ran}, not {want} (never: {never})")


async def _unbound_call(lp: Any, f: Any, name: str) -> str | None:
    """type(loop).<name>(loop, ...): what went wrong, or None."""
    ran: list[int] = []
    if name == "call_soon":
        f(lp, ran.append, 1)
    elif name == "call_soon_threadsafe":
        f(lp, ran.append, 1)
        # The wake-up asyncio's call_soon_threadsafe ends with, unbound too.
        if type(lp)._write_to_self(lp) is not None:
            return "then _write_to_self() returned something"
    elif name == "call_later":
        f(lp, 0, ran.append, 1)
    elif name == "call_at":
        f(lp, lp.time(), ran.append, 1)
    elif name == "create_future":
        fut = f(lp)
        return None if asyncio.isfuture(fut) and fut.get_loop() is lp else f"gave {fut!r}"
    elif name == "create_task":
        got = await f(lp, asyncio.sleep(0, 7))
        return None if got == 7 else f"a task of sleep(0, 7) gave {got!r}"
    else:
        got = await asyncio.wait_for(f(lp, None, pow, 2, 5), 5)
        return None if got == 32 else f"pow(2, 5) in the executor gave {got!r}"
    for _ in range(20):
        if ran:
            break
        await asyncio.sleep(0.001 if name in ("call_later", "call_at") else 0)
    return None if ran == [1] else f"ran its callback {len(ran)} times"


async def loop_method_op(sess: Session, name: str) -> None:
    """type(loop).<name> seen as a function, as inspect, functools and
    mocks see it: its names, repr and doc; bound by __get__ to the loop,
    unbound through the class; called unbound with the loop first (it
    must do its work), and with nothing (TypeError).  On ours it is a
    LoopMethods method (csrc/loopmeth.c lm_func_*), which also names its
    class and refuses to bind to another object."""
    lp = loop()
    cls = type(lp)
    f = getattr(cls, name)
    bound = f.__get__(lp, cls)
    if (f.__name__ != name or not f.__qualname__.endswith("." + name)
            or not isinstance(f.__doc__, str | None) or name not in repr(f)):
        sess.fail(f"{cls.__name__}.{name}: __name__ {f.__name__!r}, __qualname__ "
                  f"{f.__qualname__!r}, __doc__ {f.__doc__!r}, repr {f!r}")
    if f.__get__(None, cls) is not f or bound.__self__ is not lp or bound.__func__ is not f:
        sess.fail(f"{cls.__name__}.{name}.__get__ gave {f.__get__(None, cls)!r}, {bound!r}")
    try:
        f()
        sess.fail(f"{cls.__name__}.{name}() with no self did not raise TypeError")
    except TypeError:
        pass
    if type(f).__name__ == "loop_method":
        owner = next(k for k in cls.__mro__ if name in vars(k))
        if (f.__qualname__ != f"{owner.__name__}.{name}" or f.__objclass__ is not owner
                or repr(f) != f"<method {name!r} of {owner.__name__!r} objects>"):
            sess.fail(f"LoopMethods.{name}: __qualname__ {f.__qualname__!r}, __objclass__ "
                      f"{f.__objclass__!r}, repr {f!r}")
        for wrong in (lambda: f.__get__(42, int), lambda: f(object())):
            try:
                wrong()
                sess.fail(f"LoopMethods.{name} took an object that is not a loop")
            except TypeError:
                pass
    wrong = await _unbound_call(lp, f, name)
    if wrong is not None:
        sess.fail(f"{cls.__name__}.{name}(loop, ...) called unbound {wrong}")


def _unschedule(sess: Session, h: Any) -> None:
    """Takes timer h out of loop._scheduled, as Python code does, and
    cancels it (not counted as a cancelled timer in the heap)."""
    lp = loop()
    if any(x is h for x in lp._scheduled):
        lp._scheduled.remove(h)
        heapq.heapify(lp._scheduled)
    else:
        sess.fail(f"{h!r} left loop._scheduled by itself")
    h._scheduled = False
    h.cancel()


async def timer_heap_op(sess: Session, v: int) -> None:
    """loop._scheduled edited by Python code, as asyncio's own call_at
    and libraries do (sched.c keeps a copy of the heap's keys): a
    TimerHandle made in Python and heapq.heappush()ed, timers' _when
    lowered and raised then heapq.heapify(), a timer whose _when is an
    int no float holds (10**400, compared in Python: sched.c
    top_later_slow), which never runs and is taken out again (before
    the others are scheduled, or after they ran: v & 2), and call_at(None)
    refused by asyncio's own method (sched.c heap_forget).  The timers
    run in _when order."""
    lp = loop()
    ran: list[str] = []
    huge = asyncio.TimerHandle(10**400, ran.append, ("huge",), lp)
    heapq.heappush(lp._scheduled, huge)
    huge._scheduled = True
    try:
        # The loop steps with it first in the heap when no other timer
        # is there; this task stays ready, so the loop never waits for it
        # (stock asyncio's `when - time()` would overflow there).
        for _ in range(2):
            await asyncio.sleep(0)
        if v & 2:
            _unschedule(sess, huge)
        t0 = lp.time()
        lp.call_at(t0 + 0.004, ran.append, "a")
        b = asyncio.TimerHandle(t0 + 0.001, ran.append, ("b",), lp)
        heapq.heappush(lp._scheduled, b)
        b._scheduled = True
        c = lp.call_at(t0 + 0.006, ran.append, "c")
        c._when = t0 + 0.002
        want = ["b", "c", "a"]
        if v & 1:
            lp.call_at(t0 + 0.003, ran.append, "raised")._when = t0 + 0.005
            want.append("raised")
        heapq.heapify(lp._scheduled)
        try:
            lp.call_at(None, ran.append, "none")
            sess.fail("call_at(None, ...) did not raise TypeError")
        except TypeError:
            pass
        await asyncio.sleep(0.008)
        deadline = time.monotonic() + 1
        while len(ran) < len(want) and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        if ran != want:
            sess.fail(f"timers edited in loop._scheduled ran as {ran}, not {want}")
    finally:
        if huge._scheduled:
            _unschedule(sess, huge)


async def cancel_message_op(sess: Session, fut: Any, waiting: Any, v: int) -> None:
    """A pending future's _cancel_message read and set (before the cancel
    or after it: v & 2, v & 4), the future cancelled with a message
    (None, a str, not a str: v % 3), then what the task waiting on it
    (waiting, else one made here), gather(return_exceptions=True) and an
    await of it give: as an asyncio.Future (recvfut.c's getset for
    receive()'s)."""
    if waiting is None:
        waiting = asyncio.ensure_future(awaits(fut))
        await asyncio.sleep(0)
    what = type(fut).__name__
    msg = (None, "m", 7)[v % 3]
    got: list[Any] = [fut._cancel_message]
    if v & 2:
        fut._cancel_message = "set before"
        got.append(fut._cancel_message)
    cancelled = fut.cancel(msg)
    got += [cancelled, fut._cancel_message]
    final = msg
    if v & 4:
        fut._cancel_message = final = "set after"
        got.append(fut._cancel_message)
    try:
        del fut._cancel_message
        got.append("deleted")
    except AttributeError:
        pass
    want = [None, *(["set before"] if v & 2 else []), True, msg,
            *(["set after"] if v & 4 else [])]
    if got != want:
        sess.fail(f"{what}._cancel_message read, set, cancel({msg!r}): {got}, not {want}")
    args = () if final is None else (final,)
    outcomes = []
    for aw in (waiting, asyncio.gather(fut, return_exceptions=True), awaits(fut)):
        try:
            outcomes.append(await asyncio.wait_for(aw, 5))
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # The app's own task is cancelled.
            outcomes.append(exc.args)
    want = [args, [asyncio.CancelledError("" if final is None else final)], args]
    if (outcomes[0] != args or outcomes[2] != args or not isinstance(outcomes[1], list)
            or len(outcomes[1]) != 1 or type(outcomes[1][0]) is not asyncio.CancelledError
            or outcomes[1][0].args != want[1][0].args):
        sess.fail(f"a {what} cancelled with _cancel_message {final!r}: its waiting task, "
                  f"gather(return_exceptions=True) and await gave {outcomes}, not {want}")


async def cancel_message_receive(sess: Session, inst: Inst, v: int) -> None:
    """cancel_message_op on what a waiting receive() yields (its task's
    _fut_waiter: a RecvFuture on ours); a receive() that does not wait
    gives its message (noted in order)."""
    t = asyncio.ensure_future(inst.receive())
    for _ in range(3):
        if t.done() or getattr(t, "_fut_waiter", None) is not None:
            break
        await asyncio.sleep(0)
    try:
        fut = getattr(t, "_fut_waiter", None)
        if fut is None or t.done() or fut.done():
            # Its message came (the future may be done before the task
            # wakes up).
            note_message(sess, inst, await t)
            return
        await cancel_message_op(sess, fut, t, v)
    finally:
        if not t.done():
            t.cancel()


async def unsettable_op(sess: Session, v: int) -> None:
    """run_in_executor() with the loop's create_future overridden (an
    instance attribute, taken back at once) to give an Unsettable: the
    loop cannot complete it with the function's result (or, v & 1, its
    exception), and reports that once to its exception handler, as an
    exception in a callback (hop.c hop_report on ours), the future left
    pending.  The work goes to the default executor or, v & 2, to an
    executor of another kind (hop.c cd_hop_wrap).  The handler set here
    forwards any other report to the one it replaced."""
    lp = loop()
    reports: list[dict[str, Any]] = []
    prev = lp.get_exception_handler()

    def on_error(lp_: Any, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), Refused):
            reports.append(context)
        elif prev is not None:
            prev(lp_, context)
        else:
            lp_.default_exception_handler(context)

    ex = HandExecutor(plain=bool(v & 4), at_once=False) if v & 2 else None
    lp.set_exception_handler(on_error)
    try:
        lp.create_future = lambda: Unsettable(loop=lp)
        try:
            fut = lp.run_in_executor(ex, _raise_or_return, 4 if v & 1 else 0)
        finally:
            del lp.create_future
        if ex is not None:
            ex.start()
        deadline = time.monotonic() + REPORT_SECONDS
        while not reports and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        await sess.step(2)
        if ex is not None:
            ex.join()
    finally:
        lp.set_exception_handler(prev)
    if not isinstance(fut, Unsettable):
        sess.fail(f"run_in_executor() gave {fut!r}, not the loop's create_future()'s")
    ours = isinstance(lp, LoopMethods)
    message = ("Exception in callback completing a run_in_executor() future" if ours
               else "Exception in callback ")
    if (len(reports) != 1 or not reports[0]["message"].startswith(message)
            or (ours and reports[0].get("future") is not fut)):
        sess.fail(f"a run_in_executor() future that refuses its outcome: {len(reports)} "
                  f"reports {[r.get('message') for r in reports]}, not one {message!r}")
    if fut.done():
        sess.fail(f"{fut!r} is done though it refused its outcome")
    fut.cancel()
# ---- a peer that floods and never reads --------------------------------------

# read_hold_op's own server: a --write-buffer-size of 4 KiB (one read's
# pongs pass it), on a unix socket, whose send buffer is fixed (TCP's grow
# to 4 MiB on loopback as they fill, which made a stall come late or not at
# all); the client's own (HOLD_BUFSIZE) is small, so that its sends stall
# soon after the server stops reading.  No server pings and long timeouts
# (a TLS conn's first request waits for the keep-alive one): only the
# hold's own watch (conn.c conn_hup_watch) can see a held peer leave in
# time.
HOLD_SERVER = dict(write_buffer_size=4096, ping_interval=0, websocket_timeout=60,
                   websocket_connect_timeout=5, header_timeout=5, timeout_keep_alive=5)
HOLD_BUFSIZE = 4096


def _wmem_default() -> int:
    try:
        with open("/proc/sys/net/core/wmem_default") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 212992


# Pongs past this must stall the client's sends: the server's socket
# buffer, one read's pongs (64 KiB of pings) and its write buffer take less;
# a server that read on would take every ping.
HOLD_STALL_BOUND = 2 * _wmem_default() + (128 << 10)
HOLD_PAYLOADS = (0, 4, 40, 125)
HOLD_KEY = base64.b64encode(b"hold" * 4)
CLOSE_1000 = struct.pack("!H", 1000)


async def until(c: Conn, cond: Any) -> bool:
    """Turns the loop, writing what c has pending and reading what it is
    sent, until cond() holds (True) or SETTLE_SECONDS pass (False)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    spins = 0
    while not cond():
        if time.monotonic() > deadline:
            return False
        spins += 1
        await asyncio.sleep(0 if spins < 20 else 0.001)
        c.write(65536)
        c.pump()
    return True


async def push_unread(c: Conn) -> bool:
    """Writes c's pending bytes and reads none of the server's: True once
    the sends stall (no progress over 20 turns of 1 ms), False if all went."""
    idle = 0
    while c.pending and idle < 20:
        before = len(c.pending)
        c.write(65536)
        idle = idle + 1 if len(c.pending) == before else 0
        await asyncio.sleep(0.001 if idle else 0)
    return bool(c.pending)


def pong_problem(got: list[bytes], want: list[bytes]) -> str | None:
    """What differs between the pongs that came and the pings' payloads."""
    for i, (g, w) in enumerate(zip(got, want, strict=False)):
        if g != w:
            return f"pong {i} of {len(want)} carries {g[:12]!r}, not its ping's {w[:12]!r}"
    if len(got) != len(want):
        return f"{len(got)} pongs came for {len(want)} pings"
    return None


async def read_hold_op(sess: Session, d: Data, b: int) -> None:
    """A peer that makes the server answer and does not read (conn.c
    cd_conn_read_hold), on its own connection to a HOLD_SERVER: pings on a
    WebSocket (websocket.c write_check_high), or with b & 16 TLS 1.3
    KeyUpdates that ask for the server's (tls.c tls_check_flood).  b % 4
    picks how it ends, (b >> 2) % 4 the pings' payload size (HOLD_PAYLOADS;
    each starts with its number), d's next bytes the count (100 to 5200
    pings, an eighth as many KeyUpdates, written in one go), a filler and
    the mask.  The server must stop
    reading once its answers pass its write buffer (answers past
    HOLD_STALL_BOUND stall the client's sends), then either the client
    reads again (0: the app closes, 1: the client does) and gets every
    answer in order (each pong with its ping's payload; every KeyUpdate,
    or the client's TLS cannot read what follows) and the connection works
    on (the app gets the client's next message, the close handshake
    completes; a request is answered), or the client leaves while held (2:
    half-closes, 3: resets), which the server must see; either way the
    connection ends and the app with it."""
    end, size = b % 4, HOLD_PAYLOADS[(b >> 2) % 4]
    # At most 5200: 125-byte ones pass HOLD_STALL_BOUND, and the biggest
    # flood stays near 0.4 s on the sanitizers' build.
    n = 100 + 20 * d.u8()
    filler = bytes([d.u8()])
    key = d.take(4).ljust(4, b"\0")
    if b & 16:
        # An eighth: each KeyUpdate costs both sides a key derivation
        # (2065 took 0.6 s on the sanitizers' build); 152 answers pass the
        # 4 KiB write buffer.
        await tls_hold(sess, end, n // 8)
        return
    srv = get_server("ws-hold", **HOLD_SERVER)
    c = Conn(srv, ws=True, bufsize=HOLD_BUFSIZE)
    assert c.frames is not None
    c.frames.control = []
    c.pending += (b"GET /hold HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % HOLD_KEY)
    inst = await hold_app(sess, c, srv)
    if inst is None:
        c.close()
        return
    inst.post(("receive",))
    inst.post(("send", {"type": "websocket.accept"}))
    try:
        if not await until(c, lambda: c.frames is not None and c.frames.active):
            sess.fail(f"read hold: no 101 for the handshake: {bytes(c.out[:80])!r}")
            return
        pings = [i.to_bytes(4, "big") + filler * (size - 4) if size else b"" for i in range(n)]
        c.pending += b"".join(frame(True, 0, 9, p, mask_key=key) for p in pings)
        await hold_flood(sess, c, f"{n} pings of {size} bytes", n * (2 + size))
        if end < 2:
            await hold_read_again(sess, c, inst, end, pings, key)
        else:
            await hold_leave(sess, c, srv, end)
    finally:
        await hold_settle(sess, c, srv, inst)
        check_ws_output(sess, c, HOLD_KEY)


async def hold_app(sess: Session, c: Conn, srv: Server) -> Inst | None:
    """The app call of c's request: the first on srv, a hold server (this
    op alone connects to them, one connection at a time), taken out of the
    script's (the targets' checks are not about it)."""
    mine: list[Inst] = []

    def called() -> bool:
        mine.extend(i for i in sess.insts if (i.scope.get("server") or [None])[0] == srv.addr)
        return bool(mine)

    if not await until(c, called):
        sess.fail("read hold: the app was not called for the request")
        return None
    sess.insts.remove(mine[0])
    return mine[0]


async def hold_flood(sess: Session, c: Conn, what: str, answers: int) -> None:
    """Writes c's pending flood without reading; answers: the bytes the
    server writes for it."""
    flood = len(c.pending)
    stalled = await push_unread(c)
    log("read hold:", what, flood, "bytes, stalled:", stalled)
    if not stalled and answers > HOLD_STALL_BOUND:
        sess.fail(f"read hold: the server read all {flood} bytes of {what} while their "
                  f"{answers} bytes of answers went unread: it never stopped reading")


async def hold_leave(sess: Session, c: Conn, srv: Server, end: int) -> None:
    """The client half-closes (end 2) or resets (3) without reading: the
    server must see it and drop the connection."""
    if end == 2:
        c.half_close()
    else:
        c.reset()
    if not await until(c, lambda: srv.core.connections == 0):
        what = "half-closed" if end == 2 else "reset"
        sess.fail(f"read hold: the server kept the connection of a peer that {what} while held")


async def hold_settle(sess: Session, c: Conn, srv: Server, inst: Inst | None) -> None:
    """The client closes: the connection and its app must end."""
    if inst is not None:
        inst.post(("receive",))
        inst.post(("return",))
    c.close()
    if not await until(c, lambda: inst not in sess.live and srv.core.connections == 0):
        sess.fail(f"read hold: {srv.core.connections} connection(s) and the app "
                  f"(running: {inst in sess.live}) left after the client closed")


_LIBSSL: Any = None


def key_updates(obj: Any, n: int) -> bool:
    """n TLS 1.3 KeyUpdate(update_requested) records from the SSLObject
    obj, into its outgoing BIO (Python's ssl has no call for them:
    OpenSSL's SSL_key_update through ctypes, on the SSL* that _ssl keeps
    after its object's head and a weak reference, checked by the object
    _ssl stores as its app data); False if that SSL* is not found."""
    import ctypes

    global _LIBSSL
    if _LIBSSL is None:
        lib = ctypes.CDLL("libssl.so.3")
        lib.SSL_key_update.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.SSL_get_ex_data.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.SSL_get_ex_data.restype = ctypes.c_void_p
        _LIBSSL = lib
    inner = obj._sslobj
    at = id(inner) + object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p)
    ssl_ptr = ctypes.c_void_p.from_address(at).value
    if not ssl_ptr or _LIBSSL.SSL_get_ex_data(ssl_ptr, 0) != id(inner):
        return False
    for _ in range(n):
        if _LIBSSL.SSL_key_update(ssl_ptr, 1) != 1:  # SSL_KEY_UPDATE_REQUESTED
            return False
        obj.do_handshake()  # Sends it now.
    return True


async def tls_hold(sess: Session, end: int, n: int) -> None:
    """read_hold_op over TLS 1.3: n KeyUpdates, each making OpenSSL queue
    one of its own (27 bytes for 27); then a request must be answered, which
    the client can read only if every KeyUpdate of the server's came, once
    and in order (its keys move on with each)."""
    import ssl

    srv = get_server("tls-hold", tls=tls_material()["server"], **HOLD_SERVER)
    c = Conn(srv, bufsize=HOLD_BUFSIZE)
    t = TLSClient(c)

    def shake() -> bool:
        t.shuffle()
        try:
            t.obj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        finally:
            t.shuffle()
        return True

    inst: Inst | None = None
    try:
        if not await until(c, shake):
            sess.fail("read hold: the TLS handshake did not complete")
            return
        if t.obj.version() != "TLSv1.3" or not key_updates(t.obj, n):
            log("read hold: no TLS 1.3 KeyUpdate from", t.obj.version())
            return
        t.shuffle()
        await hold_flood(sess, c, f"{n} TLS KeyUpdates", n * 27)
        if end >= 2:
            await hold_leave(sess, c, srv, end)
            return
        t.obj.write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        t.shuffle()
        inst = await hold_app(sess, c, srv)
        if inst is None:
            return
        inst.post(("send", {"type": "http.response.start", "status": 200, "headers": []}))
        inst.post(("send", {"type": "http.response.body", "body": b"after the hold"}))
        got = bytearray()

        def answered() -> bool:
            t.shuffle()
            try:
                got.extend(t.obj.read(65536))
            except ssl.SSLWantReadError:
                pass
            return got.endswith(b"after the hold")

        try:
            if not await until(c, answered):
                sess.fail(f"read hold: no answer to a request after {n} TLS KeyUpdates "
                          f"(read {bytes(got[:60])!r})")
        except ssl.SSLError as exc:
            sess.fail(f"read hold: the client's TLS failed on the server's records after "
                      f"{n} KeyUpdates (one lost or out of order?): {exc!r}")
        if end == 1:
            t.close_notify()
    finally:
        await hold_settle(sess, c, srv, inst)


async def hold_read_again(sess: Session, c: Conn, inst: Inst, end: int, pings: list[bytes],
                          key: bytes) -> None:
    """read_hold_op's client reads again: every pong, the server reading
    the next message, the close handshake (end 0: the app closes first)."""
    assert c.frames is not None and c.frames.control is not None
    control = c.frames.control
    await until(c, lambda: len(control) >= len(pings) or c.eof or c.frames.closed)
    problem = pong_problem([p for op, p in control if op == 10], pings)
    if problem:
        sess.fail(f"read hold: once the client read again, {problem}")
        return
    c.pending += frame(True, 0, 1, b"after the flood", mask_key=key)
    inst.post(("receive",))
    if not await until(c, lambda: "after the flood" in inst.ws_msgs or inst not in sess.live):
        sess.fail("read hold: the app never got the message sent after the flood: "
                  "the server did not read again once its pongs drained")
        return
    if end == 0:
        inst.post(("send", {"type": "websocket.close", "code": 1000}))
        await until(c, lambda: c.frames is not None and c.frames.closed)
    c.pending += frame(True, 0, 8, CLOSE_1000, mask_key=key)
    if not await until(c, lambda: c.eof) or control[-1] != (8, CLOSE_1000):
        sess.fail(f"read hold: the close handshake after the flood did not complete "
                  f"(the server's last control frame: {control[-1]!r:.60})")


async def client_op(sess: Session, d: Data, op: int) -> bool:
    """The ops shared by the targets; False if op is not one of them."""
    conns = sess.conns
    c = conns[d.u8() % len(conns)] if conns else None
    if op == 0:
        if c is not None:
            c.write(d.u8())
    elif op == 1:
        if c is not None:
            c.write(0)
    elif op == 2:
        await sess.step(1 + d.u8() % 4)
    elif op == 3:
        await sess.sleep(1 + d.u8() % 25)
    elif op == 4:
        if c is not None:
            c.half_close()
    elif op == 5:
        if c is not None:
            c.reset()
    elif op == 6:
        inst = await sess.inst(d)
        really = d.u8() & 1
        if inst is not None and inst.task is not None and really:
            inst.task.cancel()
    elif op == 7:
        what = d.u8()
        if what < 16:
            log("close_listeners")
            sess.srv.core.close_listeners()
            sess.srv.open = False
        elif what < 48:
            log("close_all")
            sess.srv.core.close_all()
        elif what < 112:
            sess.timers.op(d)
        elif what < 144:
            await when_timers(sess, d.blob(32))
        elif what < 148:
            # After this input every server closes and the loop with them
            # (loop.c loop_close_uv, conn.c cd_conn_blocks_free).
            sess.renew_loop = True
        elif what < 180:
            await executor_op(sess, what - 148)
        elif what < 212:
            await introspect_op(sess, d, what - 180)
        elif what < 244:
            await read_hold_op(sess, d, what - 212)
    else:
        return False
    return True


async def http_script(sess: Session, d: Data) -> None:
    srv = sess.srv
    expected: dict[int, list[bytes | None]] = {}
    sess.conns.append(Conn(srv))
    expected[0] = []
    while d.more():
        op = d.u8() % 14
        log("op", op, "at", d.i)
        if await client_op(sess, d, op):
            continue
        ci = d.u8() % len(sess.conns)
        c = sess.conns[ci]
        if op in (8, 9):
            data, body = build_request(d)
            log("request", data[:400])
            c.pending += data
            expected[ci].append(body)
        elif op == 10:
            c.pending += d.blob(400)
            expected[ci].append(None)
            expected[ci].append(None)
        elif op == 11:
            await app_op(sess, d, app_http_action)
        elif op == 12:
            if len(sess.conns) < 3 and srv.open:
                sess.conns.append(Conn(srv))
                expected[len(sess.conns) - 1] = []
        else:
            inst = await sess.inst(d)
            if inst is not None:
                inst.post(("receive",))
                await sess.step(1)
    await sess.step(2)
    for c in sess.conns:
        c.pump()
        log("client read", bytes(c.out[:300]))
        check_first_response(sess, c)
    # Each app whose body came to an end must have got exactly what a
    # well-formed request carried (no lost or duplicated chunk).
    by_conn: dict[int, int] = {}
    for inst in sess.insts:
        ci = _conn_index(sess, inst)
        if ci is None:
            continue
        k = by_conn.get(ci, 0)
        by_conn[ci] = k + 1
        exp = expected.get(ci, [])
        if k < len(exp) and exp[k] is not None and all(
                e is not None and e is not REFUSED for e in exp[:k]):
            if inst.body_done and exp[k] is REFUSED:
                sess.fail(f"chunk framing past its bound: the app got the body {inst.body[:60]!r}")
            elif inst.body_done and inst.body != exp[k]:
                sess.fail(f"request body {inst.body[:60]!r} != sent {exp[k][:60]!r}")


def _conn_index(sess: Session, inst: Inst) -> int | None:
    client = inst.scope.get("client")
    for i, c in enumerate(sess.conns):
        if c.local is not None and client is not None and c.local == tuple(client):
            return i
    return 0 if len(sess.conns) == 1 else None


def one_input_http(data: bytes) -> None:
    d = Data(data)
    variant = d.u8() % 4
    if variant == 0:
        srv = get_server("http-tcp", tcp=True, max_body_size=256, server_name="c" * 14)
    elif variant == 1:
        # body_rate_grace: a body slower than --min-body-rate (240 B/s)
        # for 10 ms is refused (http1.c body_rate_on_timer).
        srv = get_server("http-tight", max_header_size=512, max_body_size=64,
                         http_timeout=0.05, limit_concurrency=2, server_name="s" * 200,
                         max_running_requests=1, body_rate_grace=0.01)
    elif variant == 2:
        srv = get_server("http")
    else:
        # Reads of 7 bytes (--read-size) next to the others' 64 KiB on the
        # same loop: heads, bodies and pipelined requests split anywhere.
        srv = get_server("http-small-read", read_size=7)
    run_script(srv, http_script, d).finish()


# ---- WebSocket -------------------------------------------------------------

def ws_key(d: Data) -> bytes:
    return base64.b64encode(d.take(16).ljust(16, b"k"))


# permessage-deflate offers: good ones, ones to decline, several at once.
EXT_OFFERS = [
    b"permessage-deflate",
    b"permessage-deflate; client_max_window_bits",
    b"permessage-deflate; server_no_context_takeover; client_no_context_takeover",
    b"permessage-deflate; server_max_window_bits=9; client_max_window_bits=9",
    b"permessage-deflate; server_max_window_bits=8, permessage-deflate",
    b"x-webkit-deflate-frame, permessage-deflate; client_max_window_bits=15",
    b'permessage-deflate; client_max_window_bits="10"',
    b"permessage-deflate; foo=1",
    b"permessage-deflate; client_max_window_bits=8; client_no_context_takeover",
]


def ext_offer(d: Data) -> bytes:
    k = d.u8()
    if k < 200:
        return EXT_OFFERS[k % len(EXT_OFFERS)]
    return re.sub(rb"[\r\n\x00]", b"", d.blob(80))


def handshake(d: Data) -> tuple[bytes, bytes, bytes | None]:
    key = ws_key(d)
    sel = d.u8()
    lines = [b"GET /ws" + re.sub(rb"[^!-~]", b"_", d.blob(20)) + b" HTTP/1.1", b"Host: x",
             b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Key: " + key,
             b"Sec-WebSocket-Version: 13"]
    if sel & 1:
        lines.append(b"Sec-WebSocket-Protocol: " + re.sub(rb"[\r\n\x00]", b"", d.blob(40)))
    if sel & 2:
        lines.append(b"Origin: http://x")
    offer = None
    if sel & 4:
        offer = ext_offer(d)
        lines.append(b"Sec-WebSocket-Extensions: " + offer)
    if sel >= 230:
        # A broken handshake now and then.
        i = 2 + d.u8() % (len(lines) - 2)
        lines[i] = d.pick([b"Sec-WebSocket-Version: 8", b"Upgrade: h2c", b"X: y",
                           b"Sec-WebSocket-Key: short", b"Connection: keep-alive",
                           b"Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!!!"])
    if d.u8() == 3:
        lines[0] = b"POST /ws HTTP/1.1"
    return b"\r\n".join(lines) + b"\r\n\r\n", key, offer


def client_compress(c: Conn, payload: bytes) -> bytes:
    """payload as a permessage-deflate message (tail stripped), with a
    9-bit window (within any window the server can ask for), keeping the
    context unless the offer asked the server to reset its own."""
    if c.deflater is None or (c.offer and b"client_no_context_takeover" in c.offer):
        c.deflater = zlib.compressobj(6, zlib.DEFLATED, -9)
    return (c.deflater.compress(payload) + c.deflater.flush(zlib.Z_SYNC_FLUSH))[:-4]


def frame(fin: bool, rsv: int, opcode: int, payload: bytes, mask: bool = True,
          mask_key: bytes = b"\x01\x02\x03\x04", long_form: int = 0) -> bytes:
    b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 15)
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126 and long_form == 0:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536 and long_form != 2:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return head + payload
    # XORed as one number: byte by byte took too long for thousands of
    # frames (the read-hold op's floods).
    stream = (mask_key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload) ^ int.from_bytes(stream)).to_bytes(n, "big")
    return head + mask_key + masked


def ws_message(d: Data, c: Conn) -> tuple[bytes, Any, bool]:
    """A whole message, fragmented at fuzzer-chosen points, with control
    frames between fragments, compressed (RSV1) now and then if the
    handshake offered permessage-deflate; returns (bytes, what the app
    must get, whether it is in so many fragments that it may pass the
    message limit: each frame counts 64 bytes, websocket.c
    CD_WS_FRAME_COST)."""
    kind = d.u8()
    binary = bool(kind & 1)
    payload = d.blob(600)
    if not binary:
        payload = payload.decode("utf-8", "replace").encode()
    compressed = bool(kind & 2) and c.offer is not None
    wire = client_compress(c, payload) if compressed else payload
    b = d.u8()
    nfrag = 1 + b % 4 if b < 252 else (b - 251) * 100  # Rarely: tiny fragments.
    out = b""
    rest = wire
    for i in range(nfrag):
        last = i == nfrag - 1
        part = rest if last else rest[:d.u8() % (len(rest) + 1)]
        rest = rest[len(part):]
        op = (2 if binary else 1) if i == 0 else 0
        rsv = 4 if compressed and i == 0 else 0
        out += frame(last, rsv, op, part, mask_key=d.take(4).ljust(4, b"\0"),
                     long_form=d.u8() % 3 if d.u8() == 0 else 0)
        if not last and d.u8() < 30:
            out += frame(True, 0, 9, d.blob(20))
    return out, payload if binary else payload.decode(), nfrag > 4


TOPICS = ["t", "u", "v", "w", "", "x" * 100, "é", 7]


def app_pubsub_action(d: Data) -> tuple[Any, ...]:
    """cdaphne.pubsub: subscribe, unsubscribe, publish (to this very
    connection when subscribed: a frame written between wslay's), or a
    publish() call; a small queue bound makes big publishes close 1013."""
    a = d.u8() % 4
    topic = d.pick(TOPICS)
    if a == 0:
        return ("send", {"type": "cdaphne.pubsub.subscribe", "topic": topic})
    if a == 1:
        return ("send", {"type": "cdaphne.pubsub.unsubscribe", "topic": topic})
    size = d.pick([0, 10, 125, 126, 65535, 65536, 3000])
    data: Any = bytes(size) if d.u8() & 1 else "é" * (size // 2)
    if a == 2:
        msg = {"type": "cdaphne.pubsub.publish", "topic": topic,
               "bytes" if isinstance(data, bytes) else "text": data}
        if d.u8() & 1:
            msg["exclude_self"] = bool(d.u8() & 1)
        return ("send", msg)
    return ("publish", topic, data)


def app_ws_action(d: Data) -> tuple[Any, ...]:
    b = d.u8()
    if 244 <= b < 255:  # 255 stays 15 (send_cancel: the only flow-controlled send)
        if b >= 252:
            return ("publish_burst", d.pick(TOPICS[:4]), 2 + d.u8() % 8)
        return app_thread_action(d, b, app_ws_action)
    a = b % 24
    if a >= 20:
        return ("receive_held", d.blob(24))
    if a >= 16:
        return app_pubsub_action(d)
    if a in (0, 1):
        return ("receive",)
    if a == 2:
        return ("receive_many", 1 + d.u8())
    if a == 3:
        return ("receive_cancel", d.pick([0, 0, 0.001, 0.005]))
    if a in (4, 5):
        msg: dict[str, Any] = {"type": "websocket.accept"}
        if d.u8() & 1:
            msg["headers"] = app_headers(d)
        s = d.u8()
        if s & 1:
            sub = d.blob(40).decode("latin-1") if s & 2 else "chat"
            # bytes: send() raises TypeError, the handshake is refused.
            msg["subprotocol"] = sub.encode("latin-1") if s & 4 else sub
        return ("send", msg)
    if a in (6, 7):
        if d.u8() & 1:
            return ("send", {"type": "websocket.send", "bytes": d.blob(3000)})
        return ("send", {"type": "websocket.send", "text": d.blob(3000).decode("utf-8", "replace")})
    if a == 8:
        msg = {"type": "websocket.close"}
        if d.u8() & 1:
            msg["code"] = d.pick([1000, 1001, 1005, 1006, 1011, 3000, 4999, 5000, 70000, -1, 999])
        r = d.u8()
        if r & 1:
            msg["reason"] = d.blob(200).decode("utf-8", "replace")
            # bytes: send() raises TypeError (the app's error: close 1011).
            if (r & 6) == 6:
                msg["reason"] = msg["reason"].encode()
        return ("send", msg)
    if a == 9:
        return ("send", {"type": "websocket.http.response.start",
                         "status": d.pick([403, 200, 500, 99]), "headers": app_headers(d)})
    if a == 10:
        return ("send", {"type": "websocket.http.response.body", "body": d.blob(100),
                         "more_body": bool(d.u8() & 1)})
    if a == 11:
        return ("raise",)
    if a == 12:
        return ("return",)
    if a == 13:
        return ("cancel",)
    if a == 14:
        return ("send", bad_message(d))
    return ("send_cancel", {"type": "websocket.send", "bytes": b"y" * (d.u8() << 12)}, 0)


class FrameScanner:
    """Checks server frames as they arrive: header bits, opcode, control
    frame sizes and close payloads; data payloads are skipped, not kept."""

    def __init__(self) -> None:
        self.active = False
        self.buf = bytearray()  # An incomplete header or control frame.
        self.skip = 0  # Data payload bytes still to pass over.
        self.failure: str | None = None
        self.deflate = False  # The 101 agreed on permessage-deflate.
        self.closed = False  # A close frame came: nothing may follow it.
        # The control frames (opcode, payload) in order, when kept: the
        # read-hold op checks every pong against its ping.
        self.control: list[tuple[int, bytes]] | None = None

    def feed(self, data: bytes) -> None:
        if self.failure is not None:
            return
        if self.skip:
            k = min(self.skip, len(data))
            self.skip -= k
            data = data[k:]
        self.buf += data
        while self.failure is None and self._one():
            pass

    def _one(self) -> bool:
        """Takes one frame (or the start of a data frame) from buf; False
        if more bytes are needed."""
        buf = self.buf
        if len(buf) < 2:
            return False
        if self.closed:
            self.failure = f"server frame after its close frame: {bytes(buf[:20])!r}"
            return False
        b0, b1 = buf[0], buf[1]
        if b1 & 0x80:
            self.failure = "server frame is masked"
            return False
        op = b0 & 15
        # RSV1 marks a compressed message: on its first frame only (the
        # server never fragments), never on a control frame.
        rsv1_ok = self.deflate and op in (1, 2)
        if b0 & (0x30 if rsv1_ok else 0x70):
            self.failure = f"server frame with RSV bits {b0:#x}"
            return False
        if op not in (0, 1, 2, 8, 9, 10):
            self.failure = f"server frame with opcode {op}"
            return False
        ln, hl = b1 & 0x7F, 2
        if ln == 126:
            if len(buf) < 4:
                return False
            ln, hl = struct.unpack_from("!H", buf, 2)[0], 4
        elif ln == 127:
            if len(buf) < 10:
                return False
            ln, hl = struct.unpack_from("!Q", buf, 2)[0], 10
        if op >= 8:
            if ln > 125 or not b0 & 0x80:
                self.failure = f"control frame {op} of {ln} bytes, fin {b0 >> 7}"
                return False
            if len(buf) < hl + ln:
                return False
            if op == 8:
                self.failure = close_payload_problem(bytes(buf[hl:hl + ln]))
                self.closed = True
            if self.control is not None:
                self.control.append((op, bytes(buf[hl:hl + ln])))
            del buf[:hl + ln]
            return True
        take = min(ln, len(buf) - hl)
        del buf[:hl + take]
        self.skip = ln - take
        return not self.skip


def check_ws_output(sess: Session, c: Conn, key: bytes) -> None:
    """The 101 head, then well-formed server frames (c.frames checked them
    as they arrived)."""
    buf = bytes(c.out)
    try:
        got = parse_head(buf)
    except ValueError as exc:
        sess.fail(f"malformed handshake response: {exc}")
        return
    if got is None:
        return
    status, headers, n = got
    if status != 101:
        return
    hmap = dict(headers)
    if [n for n, _ in headers].count(b"sec-websocket-extensions") > 1:
        sess.fail("two sec-websocket-extensions fields")
    want = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    if hmap.get(b"sec-websocket-accept") != want:
        sess.fail(f"bad sec-websocket-accept {hmap.get(b'sec-websocket-accept')!r}")
    ext = hmap.get(b"sec-websocket-extensions")
    if ext is not None:
        problem = extension_problem(c.offer, ext)
        if problem:
            sess.fail(problem)
    if c.frames is not None and c.frames.failure is not None:
        sess.fail(c.frames.failure)


def extension_problem(offer: bytes | None, ext: bytes) -> str | None:
    """What is wrong with the server's Sec-WebSocket-Extensions answer to
    `offer` (RFC 7692 7.1), or None."""
    if offer is None or b"permessage-deflate" not in offer:
        return f"extension {ext!r} that was not offered"
    parts = [p.strip() for p in ext.split(b";")]
    if parts[0] != b"permessage-deflate" or b"," in ext:
        return f"extension answer {ext!r}"
    names = [p.split(b"=")[0] for p in parts[1:]]
    if len(set(names)) != len(names):
        return f"repeated parameter in {ext!r}"
    for p in parts[1:]:
        name, _, value = p.partition(b"=")
        if name in (b"server_no_context_takeover", b"client_no_context_takeover"):
            ok = not value and name in offer
        elif name == b"server_max_window_bits":
            ok = value.isdigit() and 9 <= int(value) <= 15
        elif name == b"client_max_window_bits":
            ok = value.isdigit() and 8 <= int(value) <= 15 and name in offer
        else:
            ok = False
        if not ok:
            return f"extension parameter {p!r} in {ext!r} for offer {offer!r}"
    return None


def close_payload_problem(payload: bytes) -> str | None:
    if len(payload) == 1:
        return f"close frame payload of {len(payload)} bytes"
    if not payload:
        return None
    code = struct.unpack("!H", payload[:2])[0]
    if code < 1000 or code in (1004, 1005, 1006, 1015) or 1016 <= code < 3000 or code >= 5000:
        return f"server sent close code {code}"
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        return f"close reason is not UTF-8: {payload[2:]!r}"
    return None


async def ws_script(sess: Session, d: Data) -> None:
    c = Conn(sess.srv, ws=True)
    sess.conns.append(c)
    req, key, c.offer = handshake(d)
    c.pending += req
    sent: list[Any] = []
    tracking = True
    while d.more():
        op = d.u8() % 16
        if await client_op(sess, d, op):
            continue
        if op in (8, 9):
            data, msg, many = ws_message(d, c)
            c.pending += data
            tracking = tracking and not many
            if tracking:
                sent.append(msg)
        elif op == 10:
            # One fuzzed frame: any header bits, any opcode.
            b = d.u8()
            payload = d.blob(300)
            c.pending += frame(bool(b & 0x80), (b >> 4) & 7, b & 15, payload,
                               mask=d.u8() != 0, long_form=d.u8() % 3)
            tracking = False
        elif op == 11:
            c.pending += d.blob(200)
            tracking = False
        elif op == 12:
            code = d.pick([1000, 1001, 1002, 1005, 1006, 3000, 4999, 5000, 0, 2999])
            payload = struct.pack("!H", code) + d.blob(130) if d.u8() & 1 else b""
            c.pending += frame(True, 0, 8, payload)
            tracking = False
        elif op == 13:
            c.pending += frame(True, 0, d.pick([9, 10]), d.blob(130))
        elif op == 15 and (sel := d.u8()) & 1:
            # RSV1 with garbage, or with a small bomb (zeros past the
            # message limit), on any opcode.
            kind = d.u8()
            payload = d.blob(300) if kind & 1 else client_compress(c, bytes(kind << 7))
            c.pending += frame(True, 4, d.pick([1, 2, 0, 9, 8]), payload)
            tracking = False
        elif op == 15 and sel & 2:
            # A burst of whole messages, past the read queue's bounds (64
            # messages, 64 KiB here), maybe a ping behind them.  At most
            # 100 KB: the socket buffers must hold what the server does
            # not read, or the client's FIN could not reach a server that
            # waits for it (an HTTP app waiting for http.disconnect).
            n, size = 1 + d.u8() % 100, d.pick([0, 3, 200, 1000])
            for i in range(n):
                payload = bytes([i & 255]) * size
                c.pending += frame(True, 0, 2, payload, mask_key=bytes([i & 255, 1, 2, 3]))
                if tracking:
                    sent.append(payload)
            if d.u8() & 1:
                c.pending += frame(True, 0, 9, b"behind")
        else:
            await app_op(sess, d, app_ws_action)
    await sess.step(2)
    c.pump()
    log("client read", bytes(c.out[:300]))
    check_ws_output(sess, c, key)
    # Messages built whole and sent before any raw or odd frame must reach
    # the app in order, none lost or repeated.
    for inst in sess.insts:
        n = min(len(inst.ws_msgs), len(sent))
        if inst.ws_msgs[:n] != sent[:n]:
            sess.fail(f"app got messages {inst.ws_msgs!r:.200} but the client sent {sent!r:.200}")


def one_input_websocket(data: bytes) -> None:
    d = Data(data)
    b = d.u8()
    variant = b % 4 if b < 248 else 4
    if variant == 4:
        # --http-timeout on a WebSocket: it holds from the request to the
        # accept (http1.c starts it, websocket.c stops it), and over a
        # handshake the app is slow to answer.
        srv = get_server("ws-http-timeout", http_timeout=0.01)
    elif variant == 0:
        srv = get_server("ws-tcp", tcp=True, server_name="w" * 200,
                         ws_deflate_window_bits=9, ws_deflate_mem_level=1)
    elif variant == 1:
        srv = get_server("ws-slow", ping_interval=0, websocket_connect_timeout=5,
                         websocket_max_message_size=65536, server_name="",
                         ws_per_message_deflate=False)
    elif variant == 2:
        srv = get_server("ws")
    else:
        srv = get_server("ws-small-read", read_size=5)  # frames split anywhere
    run_script(srv, ws_script, d).finish()


# ---- response heads and handshakes ---------------------------------------------

SERVER_NAMES = [0, 1, 14, 100, 117, 118, 200, 1000]


async def head_script(sess: Session, d: Data) -> None:
    c = Conn(sess.srv)
    sess.conns.append(c)
    if d.u8() < 64:
        c.frames = FrameScanner()
        await head_ws(sess, d, c)
        return
    method = d.pick([b"GET", b"GET", b"HEAD", b"POST"])
    version = d.pick([b"HTTP/1.1", b"HTTP/1.0"])
    conn_hdr = d.pick([b"", b"Connection: close\r\n", b"Connection: keep-alive\r\n"])
    c.pending += b"%s / %s\r\nHost: x\r\n%s\r\n" % (method, version, conn_hdr)
    c.write(0)
    inst = await wait_inst(sess)
    if inst is None:
        sess.fail("the app was not called for a valid request")
        return
    status = d.pick([200, 200, 204, 304, 431, 101, 100, 103, 199, 404, 500, 599, 999, 600, 1000])
    if d.u8() == 0:
        status = d.u16()
    headers = app_headers(d) if d.u8() & 3 else []
    inst.post(("send", {"type": "http.response.start", "status": status, "headers": headers}))
    parts = [d.blob(4000) for _ in range(1 + d.u8() % 4)] if d.u8() & 1 else [d.blob(200)]
    for i, p in enumerate(parts):
        inst.post(("send", {"type": "http.response.body", "body": p,
                            "more_body": i < len(parts) - 1}))
    inst.post(("return",))
    await sess.step(3)
    deadline = time.monotonic() + SETTLE_SECONDS
    while inst in sess.live and not c.eof and time.monotonic() < deadline:
        await sess.sleep(1)
    await sess.step(2)
    log("client read", bytes(c.out[:300]))
    check_response(sess, c, inst, method, version, status, headers, b"".join(parts))


async def wait_inst(sess: Session) -> Inst | None:
    """The first app call; a loaded machine gets SETTLE_SECONDS for it."""
    deadline = time.monotonic() + SETTLE_SECONDS
    i = 0
    while not sess.insts and time.monotonic() < deadline:
        if i < 20:
            await sess.step(1)
        else:
            await sess.sleep(1)
        i += 1
    return sess.insts[0] if sess.insts else None


def header_ok(h: Any) -> bool:
    """An app header that is safe to write: [bytes, bytes], a token name,
    no control character but HTAB in the value."""
    return (isinstance(h, tuple | list) and len(h) == 2 and isinstance(h[0], bytes)
            and isinstance(h[1], bytes)
            and TOKEN_RE.fullmatch(h[0]) is not None
            and re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", h[1]) is None)


def framing_ok(sess: Session, version: bytes, rheaders: list[Any]) -> bool:
    """The head frames the body one way only (RFC 9112 6.1-6.3): no
    Content-Length with Transfer-Encoding, one length, digits only, a
    coding list ending in chunked, none to HTTP/1.0."""
    lengths = [v for k, v in rheaders if k == b"content-length"]
    codings = [v for k, v in rheaders if k == b"transfer-encoding"]
    if len(lengths) > 1 or (lengths and not lengths[0].isdigit()):
        sess.fail(f"content-length {lengths!r}")
    elif lengths and codings:
        sess.fail("content-length and transfer-encoding both sent")
    elif codings and (version == b"HTTP/1.0" or len(codings) > 1
                      or not codings[0].lower().endswith(b"chunked")):
        sess.fail(f"transfer-encoding {codings!r} to {version!r}")
    else:
        return True
    return False


def conn_options(fields: list[Any]) -> list[bytes]:
    """The options of connection fields (RFC 9110 7.6.1), lowercased."""
    return [t.strip(b" \t").lower() for k, v in fields if k.lower() == b"connection"
            for t in v.split(b",") if t.strip(b" \t")]


def connection_ok(sess: Session, headers: list[Any], rheaders: list[Any]) -> bool:
    """The head's connection options say one thing: never close and
    keep-alive both; every option of the app's but keep-alive goes out, and
    its keep-alive too unless the conn closes; its close goes out."""
    app_opts, opts = conn_options(headers), conn_options(rheaders)
    if b"close" in opts and b"keep-alive" in opts:
        sess.fail(f"the head says close and keep-alive: {rheaders!r:.300}")
    elif any(t not in opts for t in app_opts if t != b"keep-alive"):
        sess.fail(f"app connection options {app_opts!r} missing from {opts!r}")
    elif b"keep-alive" in app_opts and b"close" not in opts and b"keep-alive" not in opts:
        sess.fail(f"the app's keep-alive left out of a kept conn: {opts!r}")
    else:
        return True
    return False


def check_response(sess: Session, c: Conn, inst: Inst, method: bytes, version: bytes,
                   status: int, headers: list[Any], body: bytes) -> None:
    buf = bytes(c.out)
    try:
        got = parse_head(buf)
    except ValueError as exc:
        sess.fail(f"malformed response: {exc}")
        return
    if got is None:
        if buf and c.eof:
            sess.fail(f"the server closed after an incomplete head {buf[:80]!r}")
        return
    rstatus, rheaders, n = got
    if not framing_ok(sess, version, rheaders):
        return
    if not inst.started:
        return  # The server refused the start: a 500 or a close is fine.
    if not all(header_ok(h) for h in headers):
        sess.fail(f"the server accepted invalid response headers {headers!r:.200}")
        return
    if inst.send_errors:
        return  # A body the server refused: the response is cut.
    if rstatus != status:
        sess.fail(f"status {rstatus} for an app status {status}")
        return
    names = [k for k, _ in rheaders]
    if not connection_ok(sess, headers, rheaders):
        return
    for k, v in headers:
        if version == b"HTTP/1.0" and k.lower() == b"transfer-encoding":
            continue  # RFC 9112 6.1: never to an HTTP/1.0 client.
        if k.lower() == b"connection":
            continue  # connection_ok checked its options.
        if (k.lower(), v.strip(b" \t")) not in rheaders:
            sess.fail(f"app header {k!r}: {v[:40]!r} missing from {rheaders!r:.300}")
    if names.count(b"server") > 1 and not any(k.lower() == b"server" for k, _ in headers):
        sess.fail("two server headers")
    srv_name = sess.srv.config.server_name
    if srv_name and not any(k.lower() == b"server" for k, _ in headers):
        if dict(rheaders).get(b"server") != srv_name.encode():
            sess.fail(f"server header {dict(rheaders).get(b'server')!r:.60} != {srv_name[:60]!r}")
    framing = any(k.lower() in (b"content-length", b"transfer-encoding") for k, _ in headers)
    if framing or method == b"HEAD" or status in (204, 304) or status < 200:
        return
    rest = buf[n:]
    hmap = dict(rheaders)
    if b"content-length" in hmap:
        got_body = rest[:int(hmap[b"content-length"])]
    elif hmap.get(b"transfer-encoding") == b"chunked":
        got_body = dechunk(rest)
        if got_body is None:
            if c.eof:
                sess.fail(f"bad chunked body {rest[:80]!r}")
            return
    elif c.eof:
        got_body = rest
    else:
        return
    if got_body != body and (c.eof or len(got_body) >= len(body)):
        sess.fail(f"body {got_body[:40]!r}... ({len(got_body)}) != {body[:40]!r}... ({len(body)})")


def dechunk(buf: bytes) -> bytes | None:
    out = b""
    pos = 0
    while True:
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return None
        size = int(buf[pos:end].split(b";")[0], 16)
        pos = end + 2
        if size == 0:
            return out
        if pos + size + 2 > len(buf):
            return None
        out += buf[pos:pos + size]
        pos += size + 2


async def head_ws(sess: Session, d: Data, c: Conn) -> None:
    key = ws_key(d)
    offer = d.u8() & 1
    c.pending += (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n"
                  % (key, b"Sec-WebSocket-Protocol: chat, x\r\n" if offer else b""))
    c.write(0)
    inst = await wait_inst(sess)
    if inst is None:
        sess.fail("the app was not called for a valid handshake")
        return
    inst.post(("receive",))
    headers = app_headers(d)
    msg: dict[str, Any] = {"type": "websocket.accept", "headers": headers}
    sub = None
    if d.u8() & 1:
        sub = d.blob(300).decode("latin-1") if d.u8() & 1 else "chat"
        msg["subprotocol"] = sub
    inst.post(("send", msg))
    inst.post(("send", {"type": "websocket.close", "code": 1000}))
    inst.post(("return",))
    deadline = time.monotonic() + SETTLE_SECONDS
    while inst in sess.live and time.monotonic() < deadline:
        await sess.step(1)
    await sess.step(2)
    buf = bytes(c.out)
    try:
        got = parse_head(buf)
    except ValueError as exc:
        sess.fail(f"malformed handshake response: {exc}")
        return
    if got is None or got[0] != 101:
        return
    _, rheaders, _ = got
    if not all(header_ok(h) for h in headers):
        sess.fail(f"101 sent with invalid accept headers {headers!r:.200}")
        return
    if sub is not None and re.search(r"[\r\n\x00]", sub):
        sess.fail(f"101 sent with subprotocol {sub!r:.100}")
    server_owned = (b"sec-websocket-extensions", b"sec-websocket-accept", b"connection", b"upgrade")
    # The 101 names one subprotocol: the key's, else the app's first field
    # (its later ones, and all of them beside the key, are dropped).
    app_protos = [v.strip(b" \t") for k, v in headers if k.lower() == b"sec-websocket-protocol"]
    for k, v in headers:
        if k.lower() in server_owned or k.lower() == b"sec-websocket-protocol":
            # The server answers the extension offer and writes the switch
            # itself; the app's own fields are dropped (tests/test_deflate.py,
            # tests/test_red8_ws.py).
            continue
        if (k.lower(), v.strip(b" \t")) not in rheaders:
            sess.fail(f"accept header {k!r}: {v[:40]!r} missing from {rheaders!r:.300}")
    names = [k for k, _ in rheaders]
    for name in server_owned[1:]:
        if names.count(name) != 1:
            sess.fail(f"101 has {names.count(name)} {name!r} fields: {rheaders!r:.300}")
    hmap = dict(rheaders)
    want = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    if hmap.get(b"sec-websocket-accept") != want:
        sess.fail(f"bad sec-websocket-accept {hmap.get(b'sec-websocket-accept')!r}")
    # The server writes the subprotocol as UTF-8; the parser strips blanks.
    protos = [v for k, v in rheaders if k == b"sec-websocket-protocol"]
    want_protos = [sub.encode().strip(b" \t")] if sub is not None else app_protos[:1]
    if protos != want_protos:
        sess.fail(f"subprotocol fields {protos!r:.200} != {want_protos!r:.200}")
    check_ws_output(sess, c, key)


# The head target checks what the writers produce, not the timers (the
# http and websocket targets fuzz those): its header and keep-alive
# timeouts are generous. With the 30 ms ones, a process that is off the
# CPU for 30 ms between accepting a connection and reading it (a loaded
# machine) has its head timer close the connection with the request unread,
# and the script reports that the app was not called.
HEAD_TIMEOUTS = dict(header_timeout=30.0, timeout_keep_alive=30.0)


def one_input_head(data: bytes) -> None:
    d = Data(data)
    n = d.pick(SERVER_NAMES)
    srv = get_server(("head", n), server_name="n" * n, **HEAD_TIMEOUTS)
    run_script(srv, head_script, d).finish()


# ---- TLS -------------------------------------------------------------------

_TLS: dict[str, Any] = {}


def tls_material() -> dict[str, Any]:
    """A self-signed P-256 certificate (made once per process with the openssl
    command), the server's TLSContext and a client context that trusts it."""
    if not _TLS:
        import ssl
        import subprocess

        from cdaphne._cdaphne import TLSContext

        cert, key = os.path.join(TMPDIR, "cert.pem"), os.path.join(TMPDIR, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "2", "-subj", "/CN=localhost"],
                       check=True, capture_output=True, timeout=60)
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE
        # The server picks http/1.1 (tls.c tls_on_alpn).
        client.set_alpn_protocols(["h2", "http/1.1"])
        hello_in, hello_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = client.wrap_bio(hello_in, hello_out, server_hostname="localhost")
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        _TLS.update(server=TLSContext(cert, key), client=client, hello=hello_out.read())
    return _TLS


class TLSClient:
    """A real TLS client over memory BIOs on one Conn."""

    def __init__(self, c: Conn) -> None:
        import ssl

        self.ssl = ssl
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = tls_material()["client"].wrap_bio(self.incoming, self.outgoing,
                                                      server_hostname="localhost")
        self.conn = c
        self.dead = False
        self.open = False

    def shuffle(self) -> None:
        """Reads the conn into the incoming BIO, queues the outgoing one."""
        c = self.conn
        c.pump()
        self.incoming.write(bytes(c.out))
        c.out.clear()
        c.pending += self.outgoing.read()

    def close_notify(self) -> None:
        try:
            self.obj.unwrap()
        except (self.ssl.SSLWantReadError, self.ssl.SSLError):
            pass
        self.conn.pending += self.outgoing.read()
        self.dead = True

    def step(self, d: Data) -> None:
        c = self.conn
        c.pump()
        self.incoming.write(bytes(c.out))
        c.out.clear()
        if self.dead:
            return
        try:
            if not self.open:
                self.obj.do_handshake()
                self.open = True
            what = d.u8() % 4
            if what == 0:
                self.obj.write(b"GET /t HTTP/1.1\r\nHost: x\r\n\r\n")
            elif what == 1:
                # A blob that starts with 0xff goes 100 times over: socket
                # reads and records past the memory BIOs' 8 KiB (tls.c
                # swaps a grown, empty BIO for a new one).
                blob = d.blob(300) or b"x"
                self.obj.write(blob * 100 if blob[0] == 0xFF else blob)
                log("tls client wrote", len(blob) * (100 if blob[0] == 0xFF else 1))
            elif what == 2:
                self.obj.read(65536)
            else:
                self.obj.unwrap()  # close_notify
                self.dead = True
        except (self.ssl.SSLWantReadError, self.ssl.SSLWantWriteError):
            pass
        except (self.ssl.SSLError, OSError, ValueError):
            self.dead = True
        c.pending += self.outgoing.read()


async def tls_script(sess: Session, d: Data) -> None:
    srv = sess.srv
    hello = tls_material()["hello"]
    sess.conns.append(Conn(srv))
    clients: dict[int, TLSClient] = {}
    while d.more():
        op = d.u8() % 14
        log("tls op", op, "at", d.i)
        if await client_op(sess, d, op):
            continue
        ci = d.u8() % len(sess.conns)
        c = sess.conns[ci]
        if op == 8:
            c.pending += hello
        elif op == 9:
            c.pending += hello[: d.u16() % len(hello)]
        elif op == 10:
            c.pending += d.blob(400)
        elif op == 11:
            # One record of a fuzzer-chosen type, version and body.
            body = d.blob(300)
            rtype = d.pick((20, 21, 22, 23, 24, d.u8()))
            c.pending += bytes([rtype, 3, d.u8() % 5]) + struct.pack("!H", len(body)) + body
        elif op == 12:
            if c.sock is not None and (ci not in clients or not clients[ci].dead):
                clients.setdefault(ci, TLSClient(c)).step(d)
                c.write(0)
        else:
            if len(sess.conns) < 3 and srv.open:
                sess.conns.append(Conn(srv))


def one_input_tls(data: bytes) -> None:
    d = Data(data)
    srv = get_server("tls", tls=tls_material()["server"], header_timeout=0.5,
                     timeout_keep_alive=0.5)
    run_script(srv, tls_script, d).finish()
