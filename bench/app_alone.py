"""The Django view with no server (`django` scenario, rows "app alone"):

    python bench/app_alone.py --loop cdaphne --duration 3 --connections 50

drives bench/apps/djhello's `get_asgi_application()` in this process, with the
same GET every server gets and no socket, no HTTP parsing and no server code:
`connections` coroutines each await one request after another, as wrk's
connections do. Prints one JSON line (requests, seconds, requests_per_s, cpu_s).

It is the app's own cost with `connections` requests in flight at once, as a
server that starts every request at once (uvicorn, Granian, Daphne) runs it:
none of those can go faster than the app alone on its loop.  cdaphne runs at
most --max-running-requests (8) at once while its core is busy, where the
same view costs less CPU per request (fewer requests' objects and threads in
the caches), so its row can pass the app alone's at 50.
Every response is checked (status 200, the body) and counted only then.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aio_micro import LOOPS, new_loop

sys.path.insert(0, str(Path(__file__).resolve().parent / "apps"))
os.environ["DJANGO_SETTINGS_MODULE"] = "djhello.settings"

BODY = b"Hello, world!"
SCOPE = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.3"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/",
    "raw_path": b"/",
    "query_string": b"",
    "root_path": "",
    "headers": [(b"host", b"127.0.0.1:8000"), (b"accept", b"*/*")],
    "client": ("127.0.0.1", 40000),
    "server": ("127.0.0.1", 8000),
}


async def one_request(app: Any) -> None:
    """One GET as a server would run it: the body once, then a disconnect only
    after the response (Django listens for it while the view runs)."""
    asked = False
    finished = asyncio.Event()
    status: list[int] = []
    body: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif message["type"] == "http.response.body":
            body.append(message.get("body", b""))
            if not message.get("more_body", False):
                finished.set()

    await app(dict(SCOPE), receive, send)
    if status != [200] or b"".join(body) != BODY:
        raise SystemExit(f"wrong response: {status} {b''.join(body)[:80]!r}")


async def drive(app: Any, duration: float, connections: int) -> dict[str, Any]:
    for _ in range(100):  # warm-up: imports, URL resolver, caches
        await one_request(app)
    done = 0
    deadline = time.perf_counter() + duration

    async def connection() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await one_request(app)
            done += 1

    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(connection() for _ in range(connections)))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"requests": done, "seconds": round(seconds, 4), "requests_per_s": done / seconds,
            "cpu_s": round(cpu, 4)}  # fmt: skip


def serve_alone(
    doc: str, target: str, drive: Callable[..., Awaitable[dict[str, Any]]],
    width: tuple[str, int], argv: list[str] | None = None,
) -> int:  # fmt: skip
    """The command line of an app-alone script (this one, bench/chat_alone.py):
    --loop, --duration and the width flag (name, default); runs
    drive(app, duration, width) on a new loop of that kind and prints its JSON line."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--loop", choices=LOOPS, required=True)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument(f"--{width[0]}", type=int, default=width[1], dest="width")
    args = ap.parse_args(argv)
    module, _, name = target.partition(":")
    application = getattr(importlib.import_module(module), name)
    loop = new_loop(args.loop)
    try:
        result = loop.run_until_complete(drive(application, args.duration, args.width))
    finally:
        loop.close()
    print(json.dumps({"loop": args.loop, **result}), flush=True)
    os._exit(0)  # asgiref's executor threads must not hold the exit


def main(argv: list[str] | None = None) -> int:
    return serve_alone(__doc__ or "", "djhello.asgi:application", drive, ("connections", 50), argv)


if __name__ == "__main__":
    sys.exit(main())
