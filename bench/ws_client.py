"""WebSocket load client on picows. Runs in bench/.work/venv, pinned by the runner to core 1.

echo mode: each of N connections sends a binary message carrying (connection, sequence),
waits for the echo, checks it byte for byte, and sends the next one, until the
deadline. Prints one line "WSJSON {...}" with messages, mismatches and CPU time.

fanout mode: N connections join one chat room; one of them sends a text message,
waits until all N members (itself included) received exactly that message, and
sends the next. Prints deliveries (messages x members) and mismatches.

room mode (several processes, one room): N members per process; member 0 of each
process sends "r<proc> <seq> <send time> xxx", keeping --window of its messages in
flight: each one that every member of its own process got lets it send the next
(a closed loop per process). Every member counts every
delivery that arrives in the window [--start-at, --start-at + --duration] and keeps
the latency (now - send time) of a sample of them. Prints deliveries and latencies.

idle mode: opens N connections, prints "WSJSON {...}" with the count, then holds
them until stdin closes or --hold seconds pass, and closes them. --extensions
offers a Sec-WebSocket-Extensions value (picows itself negotiates none; an idle
connection never sees a compressed frame).

Standalone on purpose: the peer venv does not have the bench package.
"""

import argparse
import asyncio
import json
import random
import struct
import sys
import time

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect


class Stats:
    def __init__(self) -> None:
        self.messages = 0
        self.mismatches = 0
        self.closed_early = 0
        self.first_error = ""


class EchoClient(WSListener):
    """Ping-pong one message at a time and verify every echo."""

    def __init__(self, conn_id: int, size: int, stats: Stats, deadline: float) -> None:
        self.conn_id = conn_id
        self.padding = bytes(range(256)) * (max(0, size - 12) // 256 + 1)
        self.size = max(12, size)
        self.stats = stats
        self.deadline = deadline
        self.seq = 0
        self.expected = b""
        self.done = asyncio.get_running_loop().create_future()

    def _send(self, transport: WSTransport) -> None:
        self.seq += 1
        head = struct.pack("!IQ", self.conn_id, self.seq)
        self.expected = head + self.padding[: self.size - 12]
        transport.send(WSMsgType.BINARY, self.expected)

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._send(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            self._finish(early=True)
            return
        if frame.msg_type != WSMsgType.BINARY or not frame.fin:
            self._fail(f"unexpected frame type {frame.msg_type} fin={frame.fin}")
            transport.disconnect()
            return
        if frame.get_payload_as_bytes() != self.expected:
            self._fail("echoed payload differs from the message sent")
            transport.disconnect()
            return
        self.stats.messages += 1
        if time.monotonic() < self.deadline:
            self._send(transport)
        else:
            transport.send_close()
            transport.disconnect()
            self._finish(early=False)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._finish(early=True)

    def _fail(self, why: str) -> None:
        self.stats.mismatches += 1
        self.stats.first_error = self.stats.first_error or why

    def _finish(self, early: bool) -> None:
        if not self.done.done():
            if early and time.monotonic() < self.deadline:
                self.stats.closed_early += 1
            self.done.set_result(None)


class Room:
    """The fan-out bookkeeping: the message in flight and who has received it."""

    def __init__(self, size: int, deadline: float) -> None:
        self.size = size
        self.deadline = deadline
        self.members: list[WSTransport] = []
        self.expected = b""
        self.got = 0
        self.seq = 0
        self.broadcasts = 0
        self.deliveries = 0
        self.mismatches = 0
        self.first_error = ""
        self.done = asyncio.get_running_loop().create_future()

    def send_next(self) -> None:
        self.seq += 1
        head = f"seq {self.seq} ".encode()
        self.expected = head + b"x" * max(0, self.size - len(head))
        self.got = 0
        self.members[0].send(WSMsgType.TEXT, self.expected)

    def delivered(self, payload: bytes) -> None:
        if payload != self.expected:
            self.mismatches += 1
            self.first_error = self.first_error or f"unexpected message {payload[:40]!r}"
            return
        self.got += 1
        self.deliveries += 1
        if self.got == len(self.members):
            self.broadcasts += 1
            if time.monotonic() < self.deadline:
                self.send_next()
            elif not self.done.done():
                self.done.set_result(None)

    def lost(self) -> None:
        if not self.done.done() and time.monotonic() < self.deadline:
            self.first_error = self.first_error or "a member was disconnected"
            self.done.set_result(None)


class RoomMember(WSListener):
    def __init__(self, room: Room) -> None:
        self.room = room

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT and frame.fin:
            self.room.delivered(frame.get_payload_as_bytes())
        elif frame.msg_type == WSMsgType.CLOSE:
            self.room.lost()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.room.lost()


async def fanout(args: argparse.Namespace) -> dict[str, object]:
    room = Room(args.size, deadline=0.0)
    failed = 0
    first_error = ""
    sem = asyncio.Semaphore(20)

    async def join() -> None:
        nonlocal failed, first_error
        async with sem:
            try:
                transport, _ = await ws_connect(lambda: RoomMember(room), args.url)
            except Exception as exc:  # noqa: BLE001 - report any connect failure as data
                failed += 1
                first_error = first_error or repr(exc)
                return
            room.members.append(transport)

    # Every member is in before the first send: the consumer accepts after group_add.
    await asyncio.gather(*(join() for _ in range(args.connections)))
    await asyncio.sleep(0.2)
    # The runner measures the server's CPU between these two marks: the
    # start-up, the joins and the closes are not the measured window.
    print("WSMARK start", flush=True)
    cpu0 = time.process_time()
    start = time.monotonic()
    room.deadline = start + args.duration
    stalled = 0
    if room.members:
        room.send_next()
        try:
            await asyncio.wait_for(asyncio.shield(room.done), timeout=args.duration + 10)
        except TimeoutError:
            stalled = 1
            room.first_error = room.first_error or "a broadcast never reached every member"
    elapsed = time.monotonic() - start
    window_cpu = time.process_time() - cpu0
    print("WSMARK end", flush=True)
    for t in room.members:
        t.send_close()
        t.disconnect()
    return {
        "messages": room.deliveries,
        "broadcasts": room.broadcasts,
        "elapsed_s": round(elapsed, 3),
        "connected": len(room.members),
        "connect_failures": failed,
        "mismatches": room.mismatches,
        "closed_early": stalled,
        "first_error": room.first_error or first_error,
        "client_cpu_s": round(time.process_time(), 3),
        "window_client_cpu_s": round(window_cpu, 3),
    }


SAMPLE = 5000  # latencies kept per process


class RoomLoop:
    """One process's share of the room for the room mode."""

    def __init__(self, proc: int, size: int, start: float, end: float) -> None:
        self.proc = proc
        self.tag = f"r{proc} ".encode()
        self.size = size
        self.start, self.end = start, end
        self.members: list[WSTransport] = []
        self.seq = 0
        self.got: dict[int, int] = {}  # our seq in flight -> members that got it
        self.deliveries = 0
        self.broadcasts = 0
        self.mismatches = 0
        self.first_error = ""
        self.latencies: list[float] = []

    def send_next(self) -> None:
        self.seq += 1
        self.got[self.seq] = 0
        head = b"r%d %d %.6f " % (self.proc, self.seq, time.time())
        self.members[0].send(WSMsgType.TEXT, head + b"x" * max(0, self.size - len(head)))

    def delivered(self, payload: bytes) -> None:
        now = time.time()
        try:
            tag, seq, sent, _ = payload.split(b" ", 3)
            sent_at = float(sent)
        except ValueError:
            self.mismatches += 1
            self.first_error = self.first_error or f"unexpected message {payload[:40]!r}"
            return
        if self.start <= now < self.end:
            self.deliveries += 1
            # A uniform sample of at most SAMPLE latencies (reservoir).
            ms = (now - sent_at) * 1000.0
            if len(self.latencies) < SAMPLE:
                self.latencies.append(ms)
            else:
                k = random.randrange(self.deliveries)
                if k < SAMPLE:
                    self.latencies[k] = ms
        if tag == self.tag[:-1]:
            k = int(seq)
            count = self.got.get(k)
            if count is None:
                return
            if count + 1 < len(self.members):
                self.got[k] = count + 1
                return
            del self.got[k]
            self.broadcasts += 1
            if now < self.end:
                self.send_next()


class RoomLoopMember(WSListener):
    def __init__(self, room: RoomLoop) -> None:
        self.room = room

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT and frame.fin:
            self.room.delivered(frame.get_payload_as_bytes())


async def room_mode(args: argparse.Namespace) -> dict[str, object]:
    start = args.start_at
    room = RoomLoop(args.first_id, args.size, start, start + args.duration)
    failed = 0
    first_error = ""
    sem = asyncio.Semaphore(20)

    async def join() -> None:
        nonlocal failed, first_error
        async with sem:
            try:
                transport, _ = await ws_connect(lambda: RoomLoopMember(room), args.url)
            except Exception as exc:  # noqa: BLE001 - report any connect failure as data
                failed += 1
                first_error = first_error or repr(exc)
                return
            room.members.append(transport)

    await asyncio.gather(*(join() for _ in range(args.connections)))
    # Every process joined: the runner answers with the start time.
    print("WSREADY", flush=True)
    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    start = float(line or start)
    room.start, room.end = start, start + args.duration
    late = time.time() > start
    await asyncio.sleep(max(0.0, start - time.time()))
    cpu0 = time.process_time()
    if room.members:
        for _ in range(args.window):
            room.send_next()
    await asyncio.sleep(max(0.0, room.end - time.time()) + 0.3)
    cpu = time.process_time() - cpu0
    for t in room.members:
        t.send_close()
        t.disconnect()
    return {
        "messages": room.deliveries,
        "broadcasts": room.broadcasts,
        "elapsed_s": args.duration,
        "connected": len(room.members),
        "connect_failures": failed,
        "mismatches": room.mismatches,
        "closed_early": 0,
        "joined_late": int(late),
        "first_error": room.first_error or first_error,
        "client_cpu_s": round(cpu, 3),
        "latencies_ms": [round(x, 3) for x in room.latencies],
    }


class IdleClient(WSListener):
    """Connects and stays silent (picows answers pings by itself)."""


async def echo(args: argparse.Namespace) -> dict[str, object]:
    stats = Stats()
    start = time.monotonic()
    deadline = start + args.duration
    clients: list[EchoClient] = []
    failed = 0
    first_error = ""

    async def one(i: int) -> None:
        nonlocal failed, first_error
        try:
            _, client = await ws_connect(
                lambda: EchoClient(args.first_id + i, args.size, stats, deadline), args.url
            )
        except Exception as exc:  # noqa: BLE001 - report any connect failure as data
            failed += 1
            first_error = first_error or repr(exc)
            return
        clients.append(client)  # type: ignore[arg-type]

    await asyncio.gather(*(one(i) for i in range(args.connections)))
    if clients:
        await asyncio.wait_for(
            asyncio.gather(*(c.done for c in clients)), timeout=args.duration + 10
        )
    elapsed = time.monotonic() - start
    cpu = time.process_time()
    return {
        "messages": stats.messages,
        "elapsed_s": round(elapsed, 3),
        "connected": len(clients),
        "connect_failures": failed,
        "mismatches": stats.mismatches,
        "closed_early": stats.closed_early,
        "first_error": stats.first_error or first_error,
        "client_cpu_s": round(cpu, 3),
    }


async def idle(args: argparse.Namespace) -> None:
    transports: list[WSTransport] = []
    failed = 0
    first_error = ""
    sem = asyncio.Semaphore(50)  # below every server's listen backlog (hypercorn: 100)

    async def one() -> None:
        nonlocal failed, first_error
        async with sem:
            try:
                extra = {"Sec-WebSocket-Extensions": args.extensions} if args.extensions else None
                transport, _ = await ws_connect(IdleClient, args.url, extra_headers=extra)
            except Exception as exc:  # noqa: BLE001 - report any connect failure as data
                failed += 1
                first_error = first_error or repr(exc)
                return
            transports.append(transport)

    await asyncio.gather(*(one() for _ in range(args.connections)))
    report = {"connected": len(transports), "connect_failures": failed, "first_error": first_error}
    print("WSJSON " + json.dumps(report), flush=True)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.read), timeout=args.hold)
    except TimeoutError:
        pass
    for t in transports:
        t.send_close()
        t.disconnect()
    await asyncio.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["echo", "fanout", "idle", "room"])
    parser.add_argument("--start-at", type=float, default=0.0)
    parser.add_argument("--window", type=int, default=1)
    parser.add_argument("--url", required=True)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--first-id", type=int, default=0)
    parser.add_argument("--hold", type=float, default=120.0)
    parser.add_argument("--extensions", default="")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if args.mode == "echo":
        print("WSJSON " + json.dumps(asyncio.run(echo(args))), flush=True)
    elif args.mode == "fanout":
        print("WSJSON " + json.dumps(asyncio.run(fanout(args))), flush=True)
    elif args.mode == "room":
        print("WSJSON " + json.dumps(asyncio.run(room_mode(args))), flush=True)
    else:
        asyncio.run(idle(args))


if __name__ == "__main__":
    main()
