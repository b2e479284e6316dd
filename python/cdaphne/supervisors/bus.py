"""The channel layer across workers: the supervisor as a hub.

Each worker has a socketpair to the supervisor.  `cdaphne.layers` keeps
its in-process core for everything local and uses the bus only to cross
workers:

    SUB    tag, group      this worker has members in group
    UNSUB  tag, group      it has none any more (sent lazily)
    GSEND  tag, group, m   group_send: the hub copies the frame to every
                           other worker subscribed to (tag, group)
    SEND   tag, channel, r+m
                           send to a new_channel() name of another worker
                           (the name carries its worker's pid); the owner
                           answers REPLY with OK or FULL
    FLUSH  tag, "", r      flush(): the hub copies it to every other worker
                           and answers once all of them have flushed
    REPLY  tag, "", r+s    the answer to request r: status s (OK, FULL)

`tag` names the layer (its Channels alias), `m` is the pickled message, `r`
is a request (the requesting worker's pid, a number it chose).  The hub
routes frames without unpickling them, and answers a request itself (OK)
when the worker it waits for is gone or unknown: the message is lost with
that worker's channels, as if sent to a channel nobody reads.  A frame is a
header (op, tag length, key length, payload length) then the three byte
strings.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any

logger = logging.getLogger("cdaphne")

SUB, UNSUB, GSEND, SEND, FLUSH, REPLY = 1, 2, 3, 4, 5, 6
OK, FULL = 0, 1
HEADER = struct.Struct("!BBHI")
REQ = struct.Struct("!II")  # requester pid, request number
STATUS = struct.Struct("!IIB")  # the same, then OK or FULL
# Frames queued for one reader beyond this are dropped (it is stuck; the
# heartbeat check kills it soon).
MAX_QUEUED = 64 << 20

# The worker's end, set by cdaphne.supervisors.worker before the app loads.
current: WorkerBus | None = None


def frame(op: int, tag: bytes, key: bytes, payload: bytes = b"") -> bytes:
    return HEADER.pack(op, len(tag), len(key), len(payload)) + tag + key + payload


def owner_pid(channel: bytes | str) -> int | None:
    """The pid in a worker's new_channel() name (`...!w<pid>.<token>`)."""
    if isinstance(channel, str):
        channel = channel.encode()
    _, bang, rest = channel.partition(b"!")
    if not bang or not rest.startswith(b"w"):
        return None
    pid, dot, _ = rest[1:].partition(b".")
    return int(pid) if dot and pid.isdigit() else None


def split_frames(buf: bytearray) -> list[tuple[int, bytes, bytes, bytes, bytes]]:
    """Whole frames off the front of buf: (op, tag, key, payload, raw)."""
    out = []
    pos = 0
    size = HEADER.size
    while len(buf) - pos >= size:
        op, tlen, klen, plen = HEADER.unpack_from(buf, pos)
        end = pos + size + tlen + klen + plen
        if len(buf) < end:
            break
        t0 = pos + size
        k0 = t0 + tlen
        p0 = k0 + klen
        out.append((op, bytes(buf[t0:k0]), bytes(buf[k0:p0]), bytes(buf[p0:end]),
                    bytes(buf[pos:end])))
        pos = end
    del buf[:pos]
    return out


class Endpoint:
    """A non-blocking stream socket with an input and an output buffer."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.dropped = 0

    def read(self) -> bool:
        """Read what is there; False at EOF."""
        while True:
            try:
                data = self.sock.recv(1 << 18)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False
            if not data:
                return False
            self.inbuf += data

    def write(self, data: bytes) -> bool:
        """Send or queue data; True if some stays queued (wait for writable)."""
        if self.outbuf:
            if len(self.outbuf) > MAX_QUEUED:
                self.dropped += 1
                return True
            self.outbuf += data
            return True
        try:
            n = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            return False
        if n < len(data):
            self.outbuf += data[n:]
        return bool(self.outbuf)

    def flush(self) -> bool:
        """Send queued bytes; True if some stay queued."""
        while self.outbuf:
            try:
                n = self.sock.send(self.outbuf)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                self.outbuf.clear()
                return False
            del self.outbuf[:n]
        return False


class Hub:
    """The supervisor's side: subscriptions, routing, and open requests."""

    def __init__(self, on_want_write: Callable[[Any, bool], None]) -> None:
        # (tag, group) -> ends of the workers with members in it.
        self.groups: dict[tuple[bytes, bytes], set[Endpoint]] = {}
        self.by_pid: dict[int, Endpoint] = {}
        # (tag, requester pid, request number) -> [ends yet to answer, status]
        self.pending: dict[tuple[bytes, int, int], list[Any]] = {}
        self.on_want_write = on_want_write

    def add(self, pid: int, sock: socket.socket) -> Endpoint:
        end = Endpoint(sock)
        self.by_pid[pid] = end
        return end

    def remove(self, pid: int) -> None:
        end = self.by_pid.pop(pid, None)
        if end is None:
            return
        for key in [k for k, ends in self.groups.items() if end in ends]:
            ends = self.groups[key]
            ends.discard(end)
            if not ends:
                del self.groups[key]
        # Requests waiting for it are answered without it; its own are void.
        for req, entry in list(self.pending.items()):
            if req[1] == pid:
                del self.pending[req]
            elif end in entry[0]:
                self._answered(req, end, OK)
        end.sock.close()

    def on_readable(self, end: Endpoint) -> bool:
        """Route what end sent; False at EOF."""
        alive = end.read()
        for op, tag, key, payload, raw in split_frames(end.inbuf):
            if op == SUB:
                self.groups.setdefault((tag, key), set()).add(end)
            elif op == UNSUB:
                ends = self.groups.get((tag, key))
                if ends is not None:
                    ends.discard(end)
                    if not ends:
                        del self.groups[(tag, key)]
            elif op == GSEND:
                for other in self.groups.get((tag, key), ()):
                    if other is not end:
                        self._send(other, raw)
            elif op == SEND:
                pid = owner_pid(key)
                owner = self.by_pid.get(pid) if pid is not None else None
                self._request(end, tag, payload, raw, [owner] if owner is not end else [])
            elif op == FLUSH:
                others = [e for e in self.by_pid.values() if e is not end]
                self._request(end, tag, payload, raw, others)
            elif op == REPLY and len(payload) >= STATUS.size:
                requester, number, status = STATUS.unpack_from(payload)
                self._answered((tag, requester, number), end, status)
        return alive

    def _request(self, end: Endpoint, tag: bytes, payload: bytes, raw: bytes,
                 targets: Sequence[Endpoint | None]) -> None:
        """Forward request raw to targets; answer end once all have."""
        if len(payload) < REQ.size:
            return
        requester, number = REQ.unpack_from(payload)
        ends = {t for t in targets if t is not None}
        req = (tag, requester, number)
        if not ends:
            self._reply(req, OK)
            return
        self.pending[req] = [ends, OK]
        for other in ends:
            self._send(other, raw)

    def _answered(self, req: tuple[bytes, int, int], end: Endpoint, status: int) -> None:
        entry = self.pending.get(req)
        if entry is None or end not in entry[0]:
            return
        entry[0].discard(end)
        entry[1] = max(entry[1], status)
        if not entry[0]:
            del self.pending[req]
            self._reply(req, entry[1])

    def _reply(self, req: tuple[bytes, int, int], status: int) -> None:
        tag, requester, number = req
        end = self.by_pid.get(requester)
        if end is not None:
            self._send(end, frame(REPLY, tag, b"", STATUS.pack(requester, number, status)))

    def _send(self, end: Endpoint, raw: bytes) -> None:
        if end.write(raw):
            self.on_want_write(end, True)

    def on_writable(self, end: Endpoint) -> None:
        if not end.flush():
            self.on_want_write(end, False)


class WorkerBus:
    """A worker's side; cdaphne.layers calls it, the worker's loop reads it."""

    def __init__(self, fd: int) -> None:
        sock = socket.socket(fileno=fd)
        sock.set_inheritable(False)
        self.end = Endpoint(sock)
        self.pid = os.getpid()
        self.layers: dict[bytes, Any] = {}  # tag -> InMemoryChannelLayer
        self.lock = threading.Lock()
        self.loop: Any = None
        self._writing = False
        # Request number -> the future its sender awaits (on any loop).
        self._pending: dict[int, asyncio.Future[int]] = {}
        self._number = 0

    # ---- used by cdaphne.layers --------------------------------------
    def register(self, tag: bytes, layer: Any) -> None:
        self.layers.setdefault(tag, layer)

    def publish(self, op: int, tag: bytes, key: str, message: Any = None) -> None:
        payload = b"" if message is None else pickle.dumps(message, protocol=5)
        self._write(frame(op, tag, key.encode(), payload))

    def request(self, op: int, tag: bytes, key: str, message: Any = None) -> asyncio.Future[int]:
        """Publish a request; the future gets the answer (OK or FULL).

        Call it on a running event loop (any thread).  Before the worker
        serves and once it stops, nobody reads the answers: OK at once.
        """
        fut = asyncio.get_running_loop().create_future()
        payload = b"" if message is None else pickle.dumps(message, protocol=5)
        with self.lock:
            if self.loop is None:
                fut.set_result(OK)
                number = -1
            else:
                self._number = number = (self._number + 1) & 0xFFFFFFFF
                self._pending[number] = fut
        if number >= 0:
            self._write(frame(op, tag, key.encode(), REQ.pack(self.pid, number) + payload))
        return fut

    def _write(self, data: bytes) -> None:
        with self.lock:
            queued = self.end.write(data)
            if queued and not self._writing and self.loop is not None:
                self._writing = True
                self.loop.call_soon_threadsafe(self._want_write)

    # ---- the worker's event loop --------------------------------------
    def attach(self, loop: Any) -> None:
        self.loop = loop
        loop.add_reader(self.end.sock.fileno(), self._on_readable)
        with self.lock:
            if self.end.outbuf and not self._writing:
                # Published before the loop ran (at import time).
                self._writing = True
                loop.call_soon(self._want_write)

    def detach(self) -> None:
        if self.loop is not None:
            self.loop.remove_reader(self.end.sock.fileno())
            if self._writing:
                self.loop.remove_writer(self.end.sock.fileno())
            with self.lock:
                self.loop = None
        self._answer_all()

    def _answer_all(self) -> None:
        """No answer can come any more: every open request gets OK."""
        with self.lock:
            pending, self._pending = self._pending, {}
        for fut in pending.values():
            _resolve(fut, OK)

    def _want_write(self) -> None:
        if self.loop is not None:
            self.loop.add_writer(self.end.sock.fileno(), self._on_writable)

    def _on_writable(self) -> None:
        with self.lock:
            if self.end.flush():
                return
            self._writing = False
        if self.loop is not None:
            self.loop.remove_writer(self.end.sock.fileno())

    def _on_readable(self) -> None:
        if not self.end.read():
            # The supervisor is gone; the control socket says so too.
            assert self.loop is not None
            self.loop.remove_reader(self.end.sock.fileno())
            self._answer_all()
        for op, tag, key, payload, _ in split_frames(self.end.inbuf):
            try:
                self._on_frame(op, tag, key, payload)
            except Exception:
                logger.exception("channel layer: cannot deliver a message from another worker")

    def _on_frame(self, op: int, tag: bytes, key: bytes, payload: bytes) -> None:
        if op == REPLY:
            _, number, status = STATUS.unpack_from(payload)
            with self.lock:
                fut = self._pending.pop(number, None)
            if fut is not None:
                _resolve(fut, status)
            return
        layer = self.layers.get(tag)
        if op == GSEND:
            if layer is not None:
                layer._bus_deliver_group(key.decode(), pickle.loads(payload))
            return
        if op not in (SEND, FLUSH):
            return
        status = OK
        try:
            if layer is None:
                pass
            elif op == SEND:
                status = layer._bus_deliver(key.decode(), pickle.loads(payload[REQ.size:]))
            else:
                layer._bus_flush()
        finally:
            requester, number = REQ.unpack_from(payload)
            self._write(frame(REPLY, tag, b"", STATUS.pack(requester, number, status)))


def _resolve(fut: asyncio.Future[int], status: int) -> None:
    """Give fut its answer, on its own loop."""
    loop = fut.get_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is running:
        if not fut.done():
            fut.set_result(status)
        return
    try:
        loop.call_soon_threadsafe(_set_result, fut, status)
    except RuntimeError:
        pass  # Its loop is closed: nobody awaits it.


def _set_result(fut: asyncio.Future[int], status: int) -> None:
    if not fut.done():
        fut.set_result(status)
