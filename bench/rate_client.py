"""HTTP latency at a fixed request rate (like wrk2, which Debian does not ship).

Runs in bench/.work/venv (uvloop), pinned by the runner to the client core.
C keep-alive connections share the total rate R: connection i sends its k-th
GET at t0 + (i / C + k) * C / R. A request that cannot go out on time (its
connection still waits for the previous response) goes out late, and its
latency is counted from the time it was due, so a stalled server is not hidden
(no coordinated omission). Every response must be 200 with the hello body.
Prints one line "RATEJSON {...}". Standalone: the peer venv has no bench package.
"""

import argparse
import asyncio
import json
import time
from typing import cast

BODY = b"Hello, world!"


class Conn(asyncio.Protocol):
    """One keep-alive connection: one request in flight, responses parsed by content-length."""

    def __init__(self, stats: dict[str, int], latencies: list[float]) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future[None] | None = None
        self.stats = stats
        self.latencies = latencies
        self.due = 0.0
        self.transport: asyncio.BaseTransport | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if len(self.buf) < end + 4 + length:
            return
        body = bytes(self.buf[end + 4 : end + 4 + length])
        del self.buf[: end + 4 + length]
        if not head[0].startswith("HTTP/1.1 200") or body != BODY:
            self.stats["bad_response"] += 1
        else:
            self.latencies.append(time.monotonic() - self.due)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))


async def run_conn(i: int, args: argparse.Namespace, t0: float, end: float,
                   stats: dict[str, int], latencies: list[float]) -> None:  # fmt: skip
    loop = asyncio.get_running_loop()
    try:
        _, conn = await loop.create_connection(lambda: Conn(stats, latencies), args.host, args.port)
    except OSError:
        stats["connect"] += 1
        return
    # uvloop's transports do not subclass asyncio.Transport but have its methods.
    transport = cast(asyncio.Transport, conn.transport)
    request = f"GET / HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n\r\n".encode()
    period = args.connections / args.rate
    due = t0 + i * period / args.connections
    previous_done = 0.0
    while due < end:
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        # Late because the server had not answered the previous request yet: count
        # from the due time. Late because of the client's own timer: count from now.
        conn.due = due if previous_done > due else time.monotonic()
        conn.waiter = loop.create_future()
        transport.write(request)
        stats["sent"] += 1
        try:
            await asyncio.wait_for(conn.waiter, timeout=args.timeout)
        except (TimeoutError, ConnectionError):
            stats["timeout_or_closed"] += 1
            break
        previous_done = time.monotonic()
        due += period
    transport.close()


def pct(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, int(round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k] * 1000.0


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    stats = {"sent": 0, "connect": 0, "bad_response": 0, "timeout_or_closed": 0}
    latencies: list[float] = []
    t0 = time.monotonic() + 0.2
    end = t0 + args.duration
    await asyncio.gather(
        *(run_conn(i, args, t0, end, stats, latencies) for i in range(args.connections))
    )
    lat = sorted(latencies)
    return {
        "rate_target": args.rate,
        "rate_achieved": round(len(lat) / args.duration, 1),
        "responses": len(lat),
        "errors": {k: v for k, v in stats.items() if k != "sent"},
        "latency_ms": {
            "p50": round(pct(lat, 50), 3),
            "p90": round(pct(lat, 90), 3),
            "p99": round(pct(lat, 99), 3),
            "p999": round(pct(lat, 99.9), 3),
            "max": round(lat[-1] * 1000, 3) if lat else 0.0,
        },
        "client_cpu_s": round(time.process_time(), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print("RATEJSON " + json.dumps(asyncio.run(main_async(args))), flush=True)


if __name__ == "__main__":
    main()
