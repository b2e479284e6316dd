"""Echo rate of cdaphne's WebSocket with permessage-deflate on and off.

    .venv/bin/python -m bench.ws_deflate --sizes 64,16384 --reps 3 --duration 3 --connections 100

The picows client of the `ws` scenario negotiates no compression, so this
uses the `websockets` client (asyncio, its C zlib): one process pinned to
core 1, N connections each with one text message in flight, every echo
checked; the server (bench/apps/echo.py) is pinned to core 0. For each
message size the two server modes run alternately, `--ws-per-message-deflate
true` (the client offers and compresses) and `false` (no extension), and
the medians and their ratio are printed with the client's CPU share: near
100% means the client, not the server, set the rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = "The quick brown fox jumps over the lazy dog; {} pangrams later, still jumping. "


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(deflate: bool, port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'python'}:{ROOT / 'bench' / 'apps'}")
    cmd = [
        "taskset",
        "-c",
        "0",
        sys.executable,
        "-m",
        "cdaphne",
        "-b",
        "127.0.0.1",
        "-p",
        str(port),
        "--no-access-log",
        "--ping-interval",
        "0",
        "--ws-per-message-deflate",
        "true" if deflate else "false",
        "echo:app",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the server did not start")


async def client(url: str, size: int, conns: int, duration: float) -> dict[str, float]:
    from websockets.asyncio.client import connect

    base = "".join(TEXT.format(i) for i in range(size // len(TEXT) + 2))
    count = 0
    deadline = 0.0

    async def one(i: int) -> None:
        nonlocal count
        async with connect(url, max_size=None) as ws:
            seq = 0
            while time.monotonic() < deadline:
                seq += 1
                msg = f"{i}:{seq}:" + base
                msg = msg[:size]
                await ws.send(msg)
                if await ws.recv() != msg:
                    raise AssertionError("echo differs")
                count += 1

    deadline = time.monotonic() + duration
    cpu0, t0 = time.process_time(), time.monotonic()
    await asyncio.gather(*(one(i) for i in range(conns)))
    elapsed = time.monotonic() - t0
    return {
        "rate": count / elapsed,
        "messages": count,
        "client_cpu": 100 * (time.process_time() - cpu0) / elapsed,
    }


def cpu_seconds(proc: subprocess.Popen[bytes]) -> float:
    import psutil

    t = psutil.Process(proc.pid).cpu_times()
    return float(t.user + t.system)


def run_client(url: str, size: int, conns: int, duration: float) -> dict[str, float]:
    code = (
        f"import asyncio, json, sys; sys.path.insert(0, {str(ROOT)!r}); "
        f"from bench.ws_deflate import client; "
        f"print(json.dumps(asyncio.run(client({url!r}, {size}, {conns}, {duration}))))"
    )
    out = subprocess.run(
        ["taskset", "-c", "1", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="64,16384")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--connections", type=int, default=20)
    args = p.parse_args()
    servers = {}
    try:
        for deflate in (True, False):
            port = free_port()
            servers[deflate] = (start_server(deflate, port), f"ws://127.0.0.1:{port}/")
        for size in (int(s) for s in args.sizes.split(",")):
            runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
            for rep in range(args.reps):
                order = (True, False) if rep % 2 == 0 else (False, True)
                for deflate in order:
                    proc, url = servers[deflate]
                    before = cpu_seconds(proc)
                    res = run_client(url, size, args.connections, args.duration)
                    res["server_us"] = 1e6 * (cpu_seconds(proc) - before) / max(1, res["messages"])
                    runs[deflate].append(res)
            med = {d: statistics.median(r["rate"] for r in runs[d]) for d in runs}
            cpu = {d: statistics.median(r["client_cpu"] for r in runs[d]) for d in runs}
            us = {d: statistics.median(r["server_us"] for r in runs[d]) for d in runs}
            print(
                f"{size:6d} B text: deflate on {med[True]:8.0f} msg/s (client CPU "
                f"{cpu[True]:.0f}%, server {us[True]:.1f} us CPU/msg), off {med[False]:8.0f}"
                f" msg/s (client CPU {cpu[False]:.0f}%, server {us[False]:.1f} us CPU/msg),"
                f" on/off {med[True] / med[False]:.2f}; runs on "
                f"{[round(r['rate']) for r in runs[True]]} off "
                f"{[round(r['rate']) for r in runs[False]]}",
                flush=True,
            )
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=15)


if __name__ == "__main__":
    main()
