"""CPU use during one measured run: the server's process tree, the load generator, each core.

The machine is shared, so a core's busy time includes other tenants' work; the
server's and the client's own CPU time say whether either one was the limit
(near 100% of its core).
"""

import os
import resource
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _cores() -> dict[int, tuple[int, int]]:
    """cpu index -> (busy jiffies, total jiffies) from /proc/stat."""
    out: dict[int, tuple[int, int]] = {}
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        values = [int(v) for v in fields[:8]]
        idle = values[3] + values[4]  # idle + iowait
        out[int(name[3:])] = (sum(values) - idle, sum(values))
    return out


def _procs() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, CPU seconds) for every process."""
    out: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2 :].split()
        out[int(entry.name)] = (int(rest[1]), (int(rest[11]) + int(rest[12])) / TICK)
    return out


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of pid and all its descendants (live ones)."""
    procs = _procs()
    total, stack, seen = 0.0, [pid], set()
    while stack:
        p = stack.pop()
        if p in seen or p not in procs:
            continue
        seen.add(p)
        total += procs[p][1]
        stack.extend(c for c, (ppid, _) in procs.items() if ppid == p)
    return total


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class Meter:
    """CPU % of the server tree, of the runner's waited-for children (the client), per core."""

    def __init__(self, server_pid: int) -> None:
        self.pid = server_pid
        self.t0 = time.monotonic()
        self.server0 = tree_cpu_seconds(server_pid)
        self.client0 = _children_cpu()
        self.cores0 = _cores()

    def stop(self) -> dict[str, object]:
        wall = max(1e-6, time.monotonic() - self.t0)
        server = tree_cpu_seconds(self.pid) - self.server0
        client = _children_cpu() - self.client0
        end = _cores()
        busy: dict[str, float] = {}
        for cpu, (b1, t1) in end.items():
            b0, t0 = self.cores0.get(cpu, (b1, t1))
            busy[str(cpu)] = round(100.0 * (b1 - b0) / (t1 - t0), 1) if t1 > t0 else 0.0
        return {
            "server_cpu_pct": round(100.0 * server / wall, 1),
            "client_cpu_pct": round(100.0 * client / wall, 1),
            "cores_busy_pct": busy,
        }
