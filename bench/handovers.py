"""Who hands the core to whom in a Django request, app alone, per request:

    .venv/bin/python -m bench.handovers --loop cdaphne,uvloop --connections 50
    .venv/bin/python -m bench.handovers --loop cdaphne --connections 1 --timeline 5

Runs bench/app_alone.py pinned to core 0 with `-X perf` (Python functions then
name themselves in native stacks) under `perf record`, with DWARF call graphs
on every context switch and futex call.  A request is two clone3 calls of the
loop's thread (asgiref's worker at the first sync_to_async, the joiner that
ThreadSensitiveContext's exit starts); the second half of the run's requests
are counted.  Each switch and futex call is printed per request, keyed by the
thread (L: the loop's thread, T: any other), the switch's state (S: the
thread blocked; R: it was preempted, on one core mostly by a thread it has
just woken) and where: the first C frames past the futex, GIL and lock
plumbing, and the innermost Python function in <>.  --timeline N prints the
Nth counted request's events in order instead (wake-ups, epoll and writes
too), with the time in microseconds from its first clone3.

    .venv/bin/python -m bench.handovers --loop cdaphne,uvloop --cpu 4

--cpu R instead runs the loops R times each, alternating, with no perf: user
and system CPU per request of all the process's threads (getrusage of the
child, reaped) and core 0's idle time per request (/proc/stat), from two runs
of 1 and 1 + --seconds s whose difference cancels start-up and warm-up
(req/s is the longer run's; /proc/stat counts in ticks: +-10 ms per run).

What the event loop owns shows in the frames (cd_*, loop_poll_once, uvloop's
functions, epoll); the rest is CPython's GIL and locks, queue.SimpleQueue and
threading under asgiref.  Counts move little with the machine's load; times
in the timeline do (perf costs each event a few microseconds).  Needs perf and
root.  About 20 s and 150 MB of perf data (in a temporary directory) per loop.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from . import env, servers

CALLS = "call-graph=dwarf,stack-size=8192"
EVENTS = [
    f"sched:sched_switch/{CALLS}/",
    f"syscalls:sys_enter_futex/{CALLS}/",
    "sched:sched_wakeup",
    "syscalls:sys_enter_clone3",
    "syscalls:sys_enter_epoll_wait",
    "syscalls:sys_enter_epoll_pwait",
    "syscalls:sys_enter_write",
]
HEAD = re.compile(r"^\s*\S+\s+(\d+)/(\d+)\s+([\d.]+):\s+(\S+):\s*(.*)$")
# Frames that say how a thread waits, not why: skipped in the "where" column.
PLUMBING = (
    "__futex", "futex_", "do_futex", "__x64", "do_syscall", "entry_", "__schedule", "schedule",
    "exit_to_user", "irqentry", "asm_", "_PyEval", "PyObject_V", "method_vec", "[unknown]",
    "__GI___lll", "__pthread_mutex", "pthread_cond", "__new_sem", "_PySemaphore", "sem_",
    "__GI___pthread", "_PyParkingLot", "cfunction_", "_PyObject_", "_PyThreadState_Attach",
    "PyEval_", "syscall", "py::",
)  # fmt: skip
FUTEX_OPS = {0: "WAIT", 1: "WAKE", 9: "WAIT", 10: "WAKE"}


def record(loop: str, seconds: float, conns: int, data: Path) -> None:
    python = env.project_python() if loop == "cdaphne" else env.peer_python()
    events = [x for ev in EVENTS for x in ("-e", ev)]
    cmd = [*servers.pin(servers.SERVER_CORE), "perf", "record", "-q", "-o", str(data), *events,
           "--", str(python), "-X", "perf", str(env.BENCH / "app_alone.py"), "--loop", loop,
           "--duration", str(seconds), "--connections", str(conns)]  # fmt: skip
    child_env = dict(os.environ, PYTHONPATH=str(env.ROOT / "python"), PYTHONHASHSEED="0")
    proc = subprocess.run(cmd, cwd=env.ROOT, env=child_env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"perf record failed:\n{proc.stderr[-2000:]}")


def parse(data: Path) -> list[dict]:
    fields = "comm,pid,tid,time,event,trace,ip,sym"
    out = subprocess.run(["perf", "script", "-i", str(data), "-F", fields, "--no-inline"],
                         capture_output=True, text=True).stdout  # fmt: skip
    return parse_text(out)


def parse_text(out: str) -> list[dict]:
    """perf script's lines: one dict per event, its stack's symbols leaf first."""
    evs: list[dict] = []
    for line in out.splitlines():
        m = HEAD.match(line)
        if m is not None:
            pid, tid, t, ev, rest = m.groups()
            evs.append({"pid": int(pid), "tid": int(tid), "t": float(t),
                        "ev": ev.split(":")[-1], "rest": rest, "stack": []})  # fmt: skip
        elif evs and line.startswith("\t") and len(line.split(None, 1)) > 1:
            evs[-1]["stack"].append(line.split(None, 1)[1].split(" (")[0])
    return evs


def where(stack: list[str]) -> str:
    frames = [s for s in stack if not s.startswith(PLUMBING)][:3]
    py = next((s[4:].split(":")[0] for s in stack if s.startswith("py::")), "")
    return "/".join(frames) + (f" <{py}>" if py else "")


def describe(ev: dict, role: dict[int, str]) -> str:
    rest = ev["rest"]
    if ev["ev"] == "sched_switch":
        m = re.search(r"prev_state=(\S+) ==> next_comm=\S+ next_pid=(\d+)", rest)
        return f"{m.group(1)} -> {role.get(int(m.group(2)), 'other')}" if m else rest
    if ev["ev"] == "sched_wakeup":
        m = re.search(r" pid=(\d+)", rest)
        return f"wakes {role.get(int(m.group(1)), 'other')}" if m else rest
    if ev["ev"] == "sys_enter_futex":
        m = re.search(r"op: 0x(\w+)", rest)
        return FUTEX_OPS.get(int(m.group(1), 16) & 0x7F, "op") if m else rest
    return ""


def requests(evs: list[dict], main: int) -> list[float]:
    """The start of each request: every other clone3 of the loop's thread."""
    clones = [e["t"] for e in evs if e["ev"] == "sys_enter_clone3" and e["tid"] == main]
    return clones[::2]


def counts(evs: list[dict]) -> tuple[int, collections.Counter]:
    main = evs[0]["pid"]
    starts = requests(evs, main)
    lo, hi = starts[len(starts) // 2], starts[-1]
    n = sum(1 for t in starts if lo <= t < hi)
    found: collections.Counter = collections.Counter()
    for e in evs:
        if e["pid"] != main or not lo <= e["t"] < hi:
            continue
        who = "L" if e["tid"] == main else "T"
        if e["ev"] == "sched_switch":
            state = re.search(r"prev_state=(\S+)", e["rest"])
            found[("switch", who, state.group(1) if state else "?", where(e["stack"]))] += 1
        elif e["ev"] == "sys_enter_futex":
            found[("futex", who, describe(e, {}), where(e["stack"]))] += 1
    return n, found


def print_counts(loop: str, conns: int, evs: list[dict], top: int) -> None:
    n, found = counts(evs)
    totals: collections.Counter = collections.Counter()
    for key, v in found.items():
        totals[(key[0], key[1])] += v
    summary = ", ".join(f"{k[0]} {k[1]} {v / n:.2f}" for k, v in sorted(totals.items()))
    print(f"## {loop}, {conns} connections: {n} requests counted; per request: {summary}")
    print("| per request | what | thread | state/op | where |\n|---:|---|---|---|---|")
    for (what, who, state, at), v in found.most_common(top):
        print(f"| {v / n:.2f} | {what} | {who} | {state} | {at[:140]} |")


def print_timeline(evs: list[dict], nth: int) -> None:
    main = evs[0]["pid"]
    starts = requests(evs, main)
    first = len(starts) // 2 + nth
    if first + 1 >= len(starts):
        raise SystemExit(f"only {len(starts) - len(starts) // 2 - 1} requests counted")
    t0, t1 = starts[first], starts[first + 1]
    role = {main: "L"}
    for e in evs:
        if e["pid"] == main and e["tid"] not in role:
            role[e["tid"]] = f"T{e['tid']}"
    for e in evs:
        if e["pid"] == main and t0 <= e["t"] < t1:
            print(f"{(e['t'] - t0) * 1e6:8.1f} {role[e['tid']]:8s} {e['ev']:18s} "
                  f"{describe(e, role):12s} {where(e['stack'])}")  # fmt: skip


def cpu_run(loop: str, seconds: float, conns: int) -> tuple[dict, float, float, float]:
    """One app_alone run: its JSON line, user s, system s, core 0's idle s."""
    python = env.project_python() if loop == "cdaphne" else env.peer_python()
    cmd = [*servers.pin(servers.SERVER_CORE), str(python), str(env.BENCH / "app_alone.py"),
           "--loop", loop, "--duration", str(seconds), "--connections", str(conns)]  # fmt: skip
    child_env = dict(os.environ, PYTHONPATH=str(env.ROOT / "python"), PYTHONHASHSEED="0")
    r0, i0 = resource.getrusage(resource.RUSAGE_CHILDREN), core0_idle()
    out = subprocess.run(cmd, cwd=env.ROOT, env=child_env, capture_output=True, text=True)
    r1, i1 = resource.getrusage(resource.RUSAGE_CHILDREN), core0_idle()
    if out.returncode != 0:
        raise SystemExit(f"app_alone failed:\n{out.stderr[-2000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return res, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime, i1 - i0


def core0_idle() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu0 "):
            f = line.split()
            return (int(f[4]) + int(f[5])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def print_cpu(loops: list[str], reps: int, seconds: float, conns: int) -> None:
    print(f"per request, {conns} connections, runs of 1 and {1 + seconds:g} s, difference")
    print("| loop | req/s | user us | sys us | user+sys us | core 0 idle us |\n|---|" + "---:|" * 5)
    for _ in range(reps):
        for loop in loops:
            r1, u1, s1, i1 = cpu_run(loop, 1.0, conns)
            r2, u2, s2, i2 = cpu_run(loop, 1.0 + seconds, conns)
            k = 1e6 / (r2["requests"] - r1["requests"])
            user, sys_, idle = (u2 - u1) * k, (s2 - s1) * k, (i2 - i1) * k
            cols = [r2["requests_per_s"], user, sys_, user + sys_, idle]
            print(f"| {loop} | " + " | ".join(f"{c:.0f}" for c in cols) + " |", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--loop", default="cdaphne,uvloop", help="cdaphne, uvloop or both")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=0.5, help="recorded load after warm-up")
    ap.add_argument("--top", type=int, default=40, help="rows per table")
    ap.add_argument("--timeline", type=int, default=None, metavar="N")
    ap.add_argument("--cpu", type=int, default=None, metavar="R", help="CPU per request, no perf")
    args = ap.parse_args(argv)
    loops = args.loop.split(",")
    if "uvloop" in loops and not env.peer_python().exists():
        raise SystemExit(f"uvloop needs the peers' venv {env.PEER_VENV}: `python -m bench`")
    if args.cpu is not None:
        print_cpu(loops, args.cpu, args.seconds, args.connections)
        return 0
    for loop in loops:
        with tempfile.TemporaryDirectory(prefix="handovers-") as tmp:
            data = Path(tmp) / "perf.data"
            record(loop, args.seconds, args.connections, data)
            evs = parse(data)
        if args.timeline is not None:
            print(f"## {loop}, {args.connections} connections, request {args.timeline}")
            print_timeline(evs, args.timeline)
        else:
            print_counts(loop, args.connections, evs, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
