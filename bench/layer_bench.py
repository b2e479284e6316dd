#!/usr/bin/env python3
"""Channel layer benchmark: cdaphne's C layer vs Channels' InMemoryChannelLayer.

Self-contained: ``python bench/layer_bench.py [--quick] [--runs N] [--json out.json]``.

1. fan-out: ``group_send`` to a group of 1,000 members while all 1,000 receivers
   drain concurrently; reports messages delivered per second.
2. ping-pong: two tasks bounce one message over two channels; reports round
   trips per second.

Both layers run in the same process, alternating order on every run; the table
shows the median over the runs and the ratio. Every delivered message is
counted and checked (its sequence number and payload), so a layer that drops or
fails cannot look fast: a short count aborts the run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python"))

from channels.layers import InMemoryChannelLayer as ChannelsLayer  # noqa: E402

from cdaphne.layers import InMemoryChannelLayer as CdaphneLayer  # noqa: E402

IMPLS = {"cdaphne": CdaphneLayer, "channels": ChannelsLayer}


class CountError(RuntimeError):
    pass


async def fanout(cls, members: int, messages: int) -> tuple[float, float]:
    """(wall, CPU) messages delivered per second, ``messages`` group_sends to ``members``."""
    layer = cls(capacity=messages + 10)
    names = [await layer.new_channel() for _ in range(members)]
    for name in names:
        await layer.group_add("bench", name)
    counts = [0] * members
    ready = asyncio.Event()

    async def receiver(i: int, name: str) -> None:
        await ready.wait()
        for seq in range(messages):
            msg = await layer.receive(name)
            if msg["seq"] != seq or msg["type"] != "bench.message":
                raise CountError(f"receiver {i}: got {msg!r}, wanted seq {seq}")
            counts[i] += 1

    tasks = [asyncio.create_task(receiver(i, n)) for i, n in enumerate(names)]
    ready.set()
    await asyncio.sleep(0)  # every receiver is now waiting
    start, cpu = time.perf_counter(), time.process_time()
    for seq in range(messages):
        await layer.group_send(
            "bench", {"type": "bench.message", "seq": seq, "text": "hello, room"}
        )
        await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    delivered = sum(counts)
    if delivered != members * messages:
        raise CountError(f"delivered {delivered} of {members * messages}")
    await layer.flush()
    return delivered / elapsed, delivered / cpu


async def pingpong(cls, rounds: int) -> tuple[float, float]:
    """(wall, CPU) round trips per second between two tasks over two channels."""
    layer = cls()
    ping, pong = await layer.new_channel("ping"), await layer.new_channel("pong")
    seen = 0

    async def server() -> None:
        for _ in range(rounds):
            msg = await layer.receive(ping)
            await layer.send(pong, {"type": "pong", "n": msg["n"]})

    async def client() -> None:
        nonlocal seen
        for n in range(rounds):
            await layer.send(ping, {"type": "ping", "n": n})
            reply = await layer.receive(pong)
            if reply["n"] != n:
                raise CountError(f"round {n}: got {reply!r}")
            seen += 1

    srv = asyncio.create_task(server())
    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.wait_for(client(), 120)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    await srv
    if seen != rounds:
        raise CountError(f"completed {seen} of {rounds} round trips")
    return rounds / elapsed, rounds / cpu


def run(args) -> dict:
    members = 1000
    messages = 5 if args.quick else 20
    rounds = 2000 if args.quick else 20000
    runs = args.runs or (3 if args.quick else 7)
    metrics = (
        "fanout_msgs_per_s",
        "fanout_msgs_per_cpu_s",
        "pingpong_rtt_per_s",
        "pingpong_rtt_per_cpu_s",
    )
    results: dict = {name: {m: [] for m in metrics} for name in IMPLS}
    order = list(IMPLS)
    for r in range(runs):
        for name in order if r % 2 == 0 else reversed(order):
            cls = IMPLS[name]
            gc.collect()
            wall, cpu = asyncio.run(fanout(cls, members, messages))
            results[name]["fanout_msgs_per_s"].append(wall)
            results[name]["fanout_msgs_per_cpu_s"].append(cpu)
            gc.collect()
            wall, cpu = asyncio.run(pingpong(cls, rounds))
            results[name]["pingpong_rtt_per_s"].append(wall)
            results[name]["pingpong_rtt_per_cpu_s"].append(cpu)
        print(f"run {r + 1}/{runs} done", file=sys.stderr)
    summary = {}
    for metric in metrics:
        ours = statistics.median(results["cdaphne"][metric])
        theirs = statistics.median(results["channels"][metric])
        summary[metric] = {"cdaphne": ours, "channels": theirs, "ratio": ours / theirs}
    return {
        "python": platform.python_version(),
        "params": {"members": members, "messages": messages, "rounds": rounds, "runs": runs},
        "runs": results,
        "median": summary,
    }


def table(report: dict) -> str:
    p = report["params"]
    labels = {
        "fanout_msgs_per_s": f"fan-out to {p['members']} members, msgs/s (wall)",
        "fanout_msgs_per_cpu_s": f"fan-out to {p['members']} members, msgs/CPU-s",
        "pingpong_rtt_per_s": "ping-pong, round trips/s (wall)",
        "pingpong_rtt_per_cpu_s": "ping-pong, round trips/CPU-s",
    }
    lines = [
        f"Python {report['python']}, median of {p['runs']} runs, alternating order; "
        f"fan-out: {p['messages']} group_sends, ping-pong: {p['rounds']} round trips",
        "",
        "| benchmark | cdaphne | channels | ratio |",
        "|---|---:|---:|---:|",
    ]
    for metric, label in labels.items():
        m = report["median"][metric]
        lines.append(
            f"| {label} | {m['cdaphne']:,.0f} | {m['channels']:,.0f} | {m['ratio']:.1f}x |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs")
    parser.add_argument("--runs", type=int, default=0, help="runs per layer (median)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    try:
        report = run(args)
    except CountError as exc:
        print(f"layer_bench: a layer lost or garbled messages: {exc}", file=sys.stderr)
        return 1
    print(table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
