"""Where the server's core goes during the chat fan-out, broadcast by broadcast (perf).

    .venv/bin/python -m bench.fanout_idle                       # cdaphne-layer, daphne
    .venv/bin/python -m bench.fanout_idle --servers cdaphne-layer --seconds 2 --reps 3

Starts each server with the bench's chat room pinned to core 0 (as the `fanout`
scenario does), runs the fan-out client (bench/ws_client.py, 100 members, one
broadcast in flight) on core 1, and after 2 s records core 0 for --seconds with
`perf record -C 0` (scheduler switches and the socket/epoll syscalls).  A cycle
runs from the server's read of one client message (a 70-byte masked frame) to
the next.  Per server it prints the median cycle, the share of the cycle core 0
spent in the server's thread that reads the sockets, in its other threads (the
executor of sync_to_async), idle, and in other processes (this machine's other
tenants); then the writes of the thread that reads the sockets per cycle and
the span from the first to the last, and how long the server was blocked in
epoll_wait before the next message came: the client's turnaround, during
which a server with one broadcast in flight has nothing to do.

Needs perf (Debian: linux-perf) and root, or perf_event_paranoid <= 0.
"""

from __future__ import annotations

import argparse
import bisect
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from . import env, ws
from .servers import CLIENT_CORE, SERVER_CORE, SPECS, pin, start

EVENTS = [
    "sched:sched_switch",
    "syscalls:sys_exit_read",
    "syscalls:sys_exit_recvfrom",
    "syscalls:sys_enter_write",
    "syscalls:sys_enter_writev",
    "syscalls:sys_enter_sendto",
    "syscalls:sys_enter_sendmsg",
    "syscalls:sys_enter_epoll_wait",
]
LINE = re.compile(r"\s*(\d+)/(\d+)\s+([\d.]+):\s+(\S+):\s*(.*)")
WRITES = ("sys_enter_write", "sys_enter_writev", "sys_enter_sendto", "sys_enter_sendmsg")
MESSAGE = "0x46"  # a 64-byte text frame from the client: 2 + 4 (mask) + 64 bytes


def _tree(pid: int) -> dict[int, int]:
    """tid -> pid for every thread of pid and of its descendants."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[stat.rfind(")") + 2 :].split()[1])
    pids, todo = set(), [pid]
    while todo:
        p = todo.pop()
        pids.add(p)
        todo.extend(c for c, pp in parents.items() if pp == p and c not in pids)
    tids: dict[int, int] = {}
    for p in pids:
        try:
            tids.update({int(t): p for t in os.listdir(f"/proc/{p}/task")})
        except OSError:
            pass
    return tids


def _record(name: str, seconds: float, out: Path) -> dict[int, int]:
    """Runs the room against `name` and records core 0; returns the server's tids."""
    srv = start(SPECS[name], "chat", env.WORK / "logs" / "fanout_idle", 60.0)
    try:
        client = subprocess.Popen(
            [*pin(CLIENT_CORE), str(env.peer_python()), str(ws.CLIENT), "fanout",
             "--url", srv.ws_url, "--connections", "100", "--duration", str(seconds + 4),
             "--size", "64", "--first-id", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(2.0)
        tids = _tree(srv.proc.pid)
        subprocess.run(
            ["perf", "record", "-q", "-o", str(out), "-C", SERVER_CORE, "-e", ",".join(EVENTS),
             "--", "sleep", str(seconds)],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        tids.update(_tree(srv.proc.pid))  # Threads started meanwhile.
        client.wait(timeout=seconds + 60)
        return tids
    finally:
        srv.stop()


def _analyse(data: Path, tids: dict[int, int]) -> str:
    text = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "pid,tid,time,event,trace"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    ev = []
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            ev.append((float(m[3]), int(m[2]), m[4].split(":")[-1], m[5]))
    ev.sort()
    reads = [
        i for i, e in enumerate(ev)
        if e[1] in tids and e[2] in ("sys_exit_read", "sys_exit_recvfrom")
        and e[3].strip() == MESSAGE
    ]  # fmt: skip
    if len(reads) < 3:
        return "too few broadcasts recorded"
    main = Counter(ev[i][1] for i in reads).most_common(1)[0][0]
    switches = [
        (e[0], int(re.search(r"next_pid=(\d+)", e[3])[1]))  # type: ignore[index]
        for e in ev if e[2] == "sched_switch"
    ]  # fmt: skip
    times = [s[0] for s in switches]

    def kind(tid: int) -> str:
        return (
            "main" if tid == main else "threads" if tid in tids else "idle" if tid == 0 else "other"
        )

    share: dict[str, list[float]] = {k: [] for k in ("main", "threads", "idle", "other")}
    cycles, nwrites, spans, blocked = [], [], [], []
    for a, b in zip(reads, reads[1:], strict=False):
        t0, t1 = ev[a][0], ev[b][0]
        i = bisect.bisect_right(times, t0) - 1
        if i < 0:
            continue
        acc: Counter[str] = Counter()
        t, cur = t0, switches[i][1]
        for when, nxt in switches[i + 1 :]:
            if when >= t1:
                break
            acc[kind(cur)] += when - t
            t, cur = when, nxt
        acc[kind(cur)] += t1 - t
        for k in share:
            share[k].append(100.0 * acc[k] / (t1 - t0))
        cycles.append((t1 - t0) * 1e6)
        w = [e[0] for e in ev[a:b] if e[1] == main and e[2] in WRITES]
        nwrites.append(len(w))
        spans.append((w[-1] - w[0]) * 1e6 if w else 0.0)
        waits = [e for e in ev[a:b] if e[1] == main and e[2] == "sys_enter_epoll_wait"]
        last = waits[-1] if waits else None
        blocking = last is not None and "timeout: 0x00000000" not in last[3]
        blocked.append((t1 - last[0]) * 1e6 if blocking and last else 0.0)

    def med(v: list[float]) -> float:
        return statistics.median(v) if v else 0.0

    return (
        f"{len(cycles)} broadcasts, cycle {med(cycles):,.0f} us; core 0: "
        + ", ".join(f"{k} {statistics.mean(v):.1f}%" for k, v in share.items())
        + f"; writes/cycle {med(nwrites):.0f} over {med(spans):,.0f} us;"
        f" blocked before the next message {med(blocked):,.0f} us (median)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", default="cdaphne-layer,daphne")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--reps", type=int, default=1)
    args = ap.parse_args(argv)
    names = args.servers.split(",")
    with tempfile.TemporaryDirectory(prefix="fanout-idle-") as tmp:
        for rep in range(args.reps):
            for name in names:
                data = Path(tmp) / f"{name}-{rep}.data"
                load = os.getloadavg()[0]
                tids = _record(name, args.seconds, data)
                print(f"{name:14s} (load {load:.1f}) {_analyse(data, tids)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
