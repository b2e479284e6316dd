"""The chat fan-out with no server (`fanout` scenario, rows "app alone"):

    python bench/chat_alone.py --loop cdaphne --duration 3 --members 100

drives bench/apps/chatroom's WebSocket app (the Channels tutorial consumer,
group_send to the room, Channels' InMemoryChannelLayer unless
BENCH_CHANNEL_LAYER says otherwise) in this process, with no socket, no
WebSocket framing and no server code: `members` consumers are connected
through in-process receive/send callables; member 0 sends one text message,
every member's `websocket.send` of it is checked and counted, and once all
have it the next is sent (one broadcast at a time, as bench/ws_client.py's
fanout mode does). Member 0's receive() is an asyncio.Queue; the others wait
on a future that a disconnect at the end completes. Prints one JSON line
(deliveries, seconds, deliveries_per_s, cpu_s).

The consumers run exactly what they run under a server (dispatch, the
executor hop of aclose_old_connections, group_send, the layer's receive), so
no server row can spend less CPU per delivery than this on the same loop.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from app_alone import SCOPE as HTTP_SCOPE
from app_alone import serve_alone  # also puts bench/apps on sys.path

os.environ["DJANGO_SETTINGS_MODULE"] = "chatroom.settings"

# The Django view's scope (bench/app_alone.py) as a WebSocket one.
SCOPE = {k: v for k, v in HTTP_SCOPE.items() if k != "method"} | {
    "type": "websocket",
    "scheme": "ws",
    "headers": [(b"host", b"127.0.0.1:8000")],
    "subprotocols": [],
}


class Room:
    """The members' receive/send callables and the delivery count."""

    def __init__(self, members: int) -> None:
        loop = asyncio.get_running_loop()
        self.members = members
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.gone = loop.create_future()
        self.accepted = 0
        self.all_in = loop.create_future()
        self.expected = ""
        self.got = 0
        self.deliveries = 0
        self.round: asyncio.Future[None] = loop.create_future()

    def member(self, i: int) -> tuple[Any, Any]:
        connected = False

        async def receive() -> dict[str, Any]:
            nonlocal connected
            if not connected:
                connected = True
                return {"type": "websocket.connect"}
            if i == 0:
                return await self.inbox.get()
            await asyncio.shield(self.gone)
            return {"type": "websocket.disconnect", "code": 1000}

        async def send(message: dict[str, Any]) -> None:
            kind = message["type"]
            if kind == "websocket.accept":
                self.accepted += 1
                if self.accepted == self.members:
                    self.all_in.set_result(None)
            elif kind == "websocket.send":
                if message.get("text") != self.expected:
                    raise SystemExit(f"member {i} got {message!r}, expected {self.expected!r}")
                self.got += 1
                if self.got == self.members:
                    self.round.set_result(None)
            else:
                raise SystemExit(f"member {i} sent {message!r}")

        return receive, send

    async def broadcast(self, seq: int) -> None:
        self.expected = f"seq {seq} " + "x" * 52
        self.got = 0
        self.round = asyncio.get_running_loop().create_future()
        await self.inbox.put({"type": "websocket.receive", "text": self.expected})
        await self.round
        self.deliveries += self.members


async def drive(
    app: Any, duration: float, members: int, broadcasts: int | None = None
) -> dict[str, Any]:
    """duration seconds of broadcasts after the warm-up, or exactly `broadcasts`."""
    room = Room(members)
    tasks = [asyncio.ensure_future(app(dict(SCOPE), *room.member(i))) for i in range(members)]
    await room.all_in
    await asyncio.sleep(0.2)  # every group_add is done before accept; let them settle
    for seq in range(50):  # warm-up
        await room.broadcast(seq)
    room.deliveries = 0
    deadline = time.perf_counter() + duration
    t0, c0 = time.perf_counter(), time.process_time()
    seq = 50
    while (time.perf_counter() < deadline) if broadcasts is None else (seq < 50 + broadcasts):
        await room.broadcast(seq)
        seq += 1
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    room.gone.set_result(None)
    await room.inbox.put({"type": "websocket.disconnect", "code": 1000})
    await asyncio.wait(tasks, timeout=10)
    n = room.deliveries
    return {"deliveries": n, "seconds": round(seconds, 4), "deliveries_per_s": n / seconds,
            "cpu_s": round(cpu, 4)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return serve_alone(__doc__ or "", "chatroom.asgi:application", drive, ("members", 100), argv)


if __name__ == "__main__":
    sys.exit(main())
