"""Where a Django request's CPU goes, server against the app alone, per request:

    .venv/bin/python -m bench.server_gap --rows cdaphne,app-alone,uvicorn,app-alone-uvloop
    .venv/bin/python -m bench.server_gap --counts     # exact counts, not time

Each row runs pinned to core 0 as in the `django` scenario: a server under wrk
(`-t1 -c50`, core 1) or bench/app_alone.py (50 coroutines, no socket).  In the
steady state `perf record -e cpu-clock -C 0 -g` samples core 0 for --seconds.
The row's CPU time per request comes from /proc (the process tree's utime +
stime over the whole load, divided by the requests served: exact on a busy
machine too); the samples of the row's processes split it by where they
landed, so every column is microseconds of CPU per request:

- user: `python` (libpython and the stdlib's C modules), `ours` (_cdaphne,
  libuv), `libc` (libc, ld.so, vdso and the rest);
- kernel, by the system call a sample is under: `futex`, `thread` (clone3,
  exit, mmap/munmap/madvise/mprotect and the other calls of a thread's start
  and end), `net` (socket reads and writes, epoll, accept, and interrupts:
  loopback TCP), `sched` (the return to user space, context switches),
  `fault` (page faults), `k-other`;
- `loop`/`threads`: the same total split by thread (the process's first
  thread runs the event loop; the others are asgiref's workers and joins).

`others %` is the share of core 0 other processes took in the window: a row
with a large one was disturbed (the rate then says little; the CPU per request
holds better, though caches are shared with the intruders).

--counts prints what does not depend on the machine's load, per request:
context switches, system calls (futex, epoll_wait, read, write, writev,
clone3) and GIL acquisitions (`take_gil`, a uprobe on libpython that the tool
adds and removes; the column is left out if perf cannot add it), counted by
`perf stat` over the whole process tree.  A server is counted over one wrk
run; the app alone over two runs of different length, whose difference
cancels start-up and warm-up.

--app fanout measures the chat fan-out instead (the `fanout` scenario: the
Channels tutorial consumer on Channels' InMemoryChannelLayer, 100 members of
one room, one broadcast at a time from bench/ws_client.py's picows client on
core 1), per delivery (broadcasts x members); the app-alone rows run
bench/chat_alone.py (the same consumers and layer, no socket).  The window is
the client's own (between its WSMARK start and end lines): CPU from /proc and
perf's samples inside it; the counts sum the `perf stat -I` intervals that lie
wholly inside it, divided by the deliveries of that share of the window.

    .venv/bin/python -m bench.server_gap --app fanout \
        --rows cdaphne,app-alone,granian,uvicorn,app-alone-uvloop
    .venv/bin/python -m bench.server_gap --app fanout --counts

Needs perf (cpu-clock is a software event: no hardware counters needed) and
root.  Sampling costs each row the same ~1%.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from . import env, servers, ws

FREQ = 2000  # samples per second of core 0
ALONE = {"app-alone": "cdaphne", "app-alone-uvloop": "uvloop"}
THREAD_CALLS = {
    "clone", "clone3", "exit", "exit_group", "mmap", "munmap", "madvise", "mprotect",
    "set_robust_list", "rseq", "rt_sigprocmask", "getpid", "gettid", "sched_yield",
}  # fmt: skip
NET_CALLS = {
    "read", "readv", "write", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg",
    "epoll_wait", "epoll_pwait", "epoll_ctl", "accept", "accept4", "getsockname",
    "getpeername", "setsockopt", "io_uring_enter", "shutdown", "close",
}  # fmt: skip
COLUMNS = ["python", "ours", "libc", "futex", "thread", "net", "sched", "fault", "k-other"]
FRAME = re.compile(r"\s*[0-9a-f]+\s+(\S+)\s+\((.*)\)")
# The system call a kernel sample is under.  Some calls have no __x64_sys_
# frame in the stack (the kernel inlines it): ksys_write, __sys_sendto.
SYSCALL = re.compile(r"(?:__(?:x64|do)_sys_|ksys_|__sys_)(\w+)")


def kernel_column(syms: list[str]) -> str:
    """The column of a sample whose leaf is in the kernel (its frames leaf first)."""
    for sym in syms:
        m = SYSCALL.match(sym)
        if m is not None:
            call = m.group(1)
            if call == "futex":
                return "futex"
            return "thread" if call in THREAD_CALLS else "net" if call in NET_CALLS else "k-other"
    joined = " ".join(syms)
    if "page_fault" in joined:
        return "fault"
    if "irq" in joined:
        return "net"
    if re.search(r"exit_to_user|schedule|ret_from_fork", joined):
        return "sched"
    return "k-other"


def user_column(dso: str) -> str:
    name = dso.rsplit("/", 1)[-1]
    if name.startswith(("_cdaphne", "libuv")):
        return "ours"
    if name.startswith(("libpython", "python")) or "cpython-3" in name:
        return "python"
    return "libc"


def tree(pid: int) -> set[int]:
    """pid and its descendants (Granian serves from a child process)."""
    pids = {pid}
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids = path.read_text().split()
        except OSError:
            continue
        for kid in kids:
            pids |= tree(int(kid))
    return pids


def cpu_seconds(pids: set[int]) -> float:
    """utime + stime of these processes (every thread, live and reaped)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def split(data: Path, pids: set[int]) -> tuple[collections.Counter[str], int]:
    """Samples of these processes' threads by column and by thread, and all samples."""
    out = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "pid,tid,ip,sym,dso"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    counts: collections.Counter[str] = collections.Counter()
    loops = {str(p) for p in pids}  # each process's first thread
    total = 0
    for block in out.split("\n\n"):
        lines = block.strip().splitlines()
        m = re.match(r"\s*(-?\d+)/(-?\d+)", lines[0]) if lines else None
        if m is None:
            continue
        total += 1
        if int(m.group(1)) not in pids:
            counts["idle" if m.group(1) == "0" else "others"] += 1
            continue
        frames = [f for f in (FRAME.match(x) for x in lines[1:]) if f is not None]
        if not frames:
            continue
        counts["loop" if m.group(2) in loops else "threads"] += 1
        if "kernel" in frames[0].group(2):
            syms = [f.group(1) for f in frames if "kernel" in f.group(2)]
            counts[kernel_column(syms)] += 1
        else:
            counts[user_column(frames[0].group(2))] += 1
    return counts, total


def record(seconds: float, out: Path) -> None:
    subprocess.run(
        ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(FREQ), "-C", servers.SERVER_CORE,
         "-g", "-o", str(out), "--", "sleep", str(seconds)],
        check=True, capture_output=True,
    )  # fmt: skip


def wrk(url: str, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*servers.pin(servers.CLIENT_CORE), "wrk", "-t1", "-c50", f"-d{int(seconds)}s", url],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


Run = tuple[set[int], float, float]  # pids, requests/s, CPU seconds per request
FANOUT_MEMBERS = 100
APP = "django"  # --app: what a row serves
UNIT = "request"  # what the rows are per ("delivery" for --app fanout)


@dataclasses.dataclass
class Window:
    """The fan-out client's measured window: deliveries, and what the caller's
    on_start/on_end saw at its marks."""

    deliveries: int = 0
    elapsed: float = 0.0
    marks: dict[str, float] = dataclasses.field(default_factory=dict)


def fanout(url: str, seconds: float, on_mark: Callable[[str], None] | None = None) -> Window:
    """One fan-out run of `seconds` (bench/ws_client.py fanout, pinned to core 1);
    on_mark("start"/"end") runs at the client's marks (their monotonic times are kept)."""
    win = Window()

    def mark(what: str) -> None:
        win.marks[what] = time.monotonic()
        if on_mark is not None:
            on_mark(what)

    r = ws.echo(url, FANOUT_MEMBERS, int(seconds), 64, 1, "fanout", marks=mark)
    if r.errors and any(r.errors.values()) or r.connected < FANOUT_MEMBERS:
        raise SystemExit(f"fanout client failed: {r.errors} {r.first_error}")
    win.deliveries, win.elapsed = r.messages, r.messages / r.rate if r.rate else 0.0
    return win


def run_fanout(name: str, seconds: float, data: Path, log_dir: Path) -> Run:
    """A server under the fan-out client while perf samples core 0 from a
    second after the client's start mark."""
    srv = servers.start(servers.SPECS[name], "chat", log_dir, timeout=60)
    try:
        fanout(srv.ws_url, 2)  # warm-up
        pids = tree(srv.proc.pid)
        cpu: dict[str, float] = {}
        rec = threading.Timer(1.0, record, (seconds, data))

        def on_mark(what: str) -> None:
            cpu[what] = cpu_seconds(pids)
            if what == "start":
                rec.start()

        win = fanout(srv.ws_url, seconds + 2, on_mark)
        rec.join()
        return pids, win.deliveries / win.elapsed, (cpu["end"] - cpu["start"]) / win.deliveries
    finally:
        srv.stop()


def run_server(name: str, seconds: float, data: Path, log_dir: Path) -> Run:
    """A server under wrk while perf samples core 0."""
    srv = servers.start(servers.SPECS[name], "django", log_dir, timeout=60)
    try:
        wrk(srv.url, 2).wait()  # warm-up
        pids = tree(srv.proc.pid)
        cpu0 = cpu_seconds(pids)
        load = wrk(srv.url, seconds + 2)
        time.sleep(1)
        record(seconds, data)
        out = load.communicate()[0]
        cpu = cpu_seconds(pids) - cpu0
        m = re.search(r"(\d+) requests in ([\d.]+)s", out)
        if m is None or "Non-2xx" in out or "Socket errors" in out:
            raise SystemExit(f"{name}: wrk failed:\n{out}")
        n = int(m.group(1))
        return pids, n / float(m.group(2)), cpu / n
    finally:
        srv.stop()


def alone_script() -> str:
    """The app alone: Django's view (bench/app_alone.py) or the chat room
    (bench/chat_alone.py: 100 members, one broadcast at a time)."""
    return "chat_alone.py" if APP == "fanout" else "app_alone.py"


def run_alone(row: str, seconds: float, data: Path) -> Run:
    """bench/app_alone.py while perf samples core 0.  The window opens once
    asgiref's threads exist (the app is serving)."""
    loop = ALONE[row]
    python = env.project_python() if loop == "cdaphne" else env.peer_python()
    cmd = [*servers.pin(servers.SERVER_CORE), str(python), str(env.BENCH / alone_script()),
           "--loop", loop, "--duration", str(seconds + 4)]  # fmt: skip
    child_env = dict(os.environ, PYTHONPATH=str(env.ROOT / "python"))
    proc = subprocess.Popen(cmd, cwd=env.ROOT, env=child_env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    threads = 2 if APP == "fanout" else 3  # the loop and asgiref's worker(s)
    while len(os.listdir(f"/proc/{proc.pid}/task")) < threads and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)
    record(seconds, data)
    out = proc.communicate()[0]
    r = json.loads(out.strip().splitlines()[-1])
    n = r["deliveries" if APP == "fanout" else "requests"]
    return {proc.pid}, n / r["seconds"], r["cpu_s"] / n


COUNTS = {
    "switches": "context-switches",
    "futex": "syscalls:sys_enter_futex",
    "epoll_wait": "syscalls:sys_enter_epoll_wait",
    "epoll_pwait": "syscalls:sys_enter_epoll_pwait",
    "read": "syscalls:sys_enter_read",
    "write": "syscalls:sys_enter_write",
    "writev": "syscalls:sys_enter_writev",
    "clone3": "syscalls:sys_enter_clone3",
    # An event name of this process's own: perf refuses a second probe of the
    # same name (another tool's take_gil), and the probe is removed at the end.
    "take_gil": f"cdgap:take_gil_{os.getpid()}",
}


def add_gil_probe() -> bool:
    """The take_gil uprobe on the project's libpython (the peers' venv shares it)."""
    code = "import sysconfig as s; print(*map(s.get_config_var, ('LIBDIR', 'INSTSONAME')))"
    lib = subprocess.run([str(env.project_python()), "-c", code], capture_output=True, text=True)
    probe = f"{COUNTS['take_gil']}=take_gil"
    add = ["perf", "probe", "-q", "-x", "/".join(lib.stdout.split()), probe]
    return lib.returncode == 0 and subprocess.run(add, capture_output=True).returncode == 0


def stat_argv(events: list[str], out: Path) -> list[str]:
    return ["perf", "stat", "-x", ",", "-o", str(out), "-e", ",".join(events)]


def read_stat(
    out: Path, events: list[str], window: tuple[float, float] | None = None
) -> dict[str, float]:
    """The counts perf stat -x wrote, by column name; with -I, the intervals
    that end inside window (seconds from perf's start)."""
    names = {ev: col for col, ev in COUNTS.items() if ev in events}
    res: dict[str, float] = {}
    for line in out.read_text().splitlines():
        fields = line.split(",")
        if window is not None:
            if len(fields) < 4 or not window[0] < float(fields[0] or -1) <= window[1]:
                continue
            fields = fields[1:]
        if len(fields) > 2 and fields[2] in names and fields[0].strip().isdigit():
            res[names[fields[2]]] = res.get(names[fields[2]], 0.0) + float(fields[0])
    return res


def count_server(name: str, seconds: float, events: list[str], tmp: Path) -> dict[str, float]:
    """The server runs under `perf stat -I` (perf -p cannot follow a process
    whose threads come and go: a uprobe on a thread that ended is an error);
    the intervals of the measured wrk run, with a second of idle on each side,
    are summed."""
    spec = servers.SPECS[name]
    out = tmp / f"{name}.stat"
    ms = 250
    counted = dataclasses.replace(
        spec, argv=lambda t, p: [*stat_argv(events, out), "-I", str(ms), "--", *spec.argv(t, p)]
    )
    t0 = time.monotonic()
    if APP == "fanout":
        return count_fanout(counted, seconds, events, out, t0, tmp)
    srv = servers.start(counted, "django", tmp / "logs", timeout=60)
    try:
        wrk(srv.url, 2).wait()  # warm-up
        time.sleep(1)
        begin = time.monotonic() - t0
        load = wrk(srv.url, seconds).communicate()[0]
        time.sleep(1)
        until = time.monotonic() - t0
    finally:
        srv.stop()
    m = re.search(r"(\d+) requests in", load)
    if m is None or "Non-2xx" in load or "Socket errors" in load:
        raise SystemExit(f"{name}: wrk failed:\n{load}")
    counts = read_stat(out, events, (begin - 0.5, until - 0.5))
    if not counts:
        raise SystemExit(f"{name}: perf stat counted nothing:\n{out.read_text()[-2000:]}")
    return {k: v / int(m.group(1)) for k, v in counts.items()}


def count_fanout(
    spec: servers.ServerSpec, seconds: float, events: list[str], out: Path, t0: float, tmp: Path
) -> dict[str, float]:
    """count_server for --app fanout: the intervals wholly inside the client's
    window (less its first half second), over the deliveries of that share."""
    srv = servers.start(spec, "chat", tmp / "logs", timeout=60)
    try:
        fanout(srv.ws_url, 2)  # warm-up
        win = fanout(srv.ws_url, seconds)
    finally:
        srv.stop()
    begin, end = win.marks["start"] - t0 + 0.5, win.marks["end"] - t0
    covered = (int((end - begin) / 0.25) - 1) * 0.25
    counts = read_stat(out, events, (begin + 0.25, begin + 0.25 + covered))
    if not counts or covered <= 0:
        raise SystemExit(f"{spec.name}: perf stat counted nothing:\n{out.read_text()[-2000:]}")
    share = win.deliveries * covered / win.elapsed
    return {k: v / share for k, v in counts.items()}


def count_alone(row: str, seconds: float, events: list[str], tmp: Path) -> dict[str, float]:
    loop = ALONE[row]
    python = env.project_python() if loop == "cdaphne" else env.peer_python()
    child_env = dict(os.environ, PYTHONPATH=str(env.ROOT / "python"))
    runs = []
    for duration in (1.0, 1.0 + seconds):
        out = tmp / f"{row}-{duration:g}.stat"
        script = str(env.BENCH / alone_script())
        cmd = [*servers.pin(servers.SERVER_CORE), *stat_argv(events, out), "--", str(python),
               script, "--loop", loop, "--duration", str(duration)]  # fmt: skip
        proc = subprocess.run(cmd, cwd=env.ROOT, env=child_env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{row}: {alone_script()} failed:\n{proc.stderr[-1000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        n = r["deliveries" if APP == "fanout" else "requests"]
        runs.append((n, read_stat(out, events)))
    (n1, c1), (n2, c2) = runs
    return {k: (c2[k] - c1.get(k, 0.0)) / (n2 - n1) for k in c2}


def counts_table(results: dict[str, dict[str, float]]) -> str:
    cols = [c for c in COUNTS if any(c in r for r in results.values())]
    lines = ["| row | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for row, res in results.items():
        lines.append(f"| {row} | " + " | ".join(f"{res.get(c, 0.0):.2f}" for c in cols) + " |")
    return "\n".join(lines)


def counts_main(rows: list[str], seconds: float) -> int:
    added = add_gil_probe()
    events = [ev for col, ev in COUNTS.items() if added or col != "take_gil"]
    results: dict[str, dict[str, float]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="server_gap-") as tmp:
            for row in rows:
                if row in ALONE:
                    results[row] = count_alone(row, seconds, events, Path(tmp))
                else:
                    results[row] = count_server(row, seconds, events, Path(tmp))
    finally:
        if added:
            subprocess.run(["perf", "probe", "-q", "-d", COUNTS["take_gil"]], capture_output=True)
    print(f"per {UNIT}, whole process tree ({seconds:g} s of load)")
    print(counts_table(results))
    return 0


def measure(row: str, seconds: float, tmp: Path) -> dict[str, float]:
    data = tmp / f"{row}.data"
    if row in ALONE:
        pids, rate, cpu = run_alone(row, seconds, data)
    elif APP == "fanout":
        pids, rate, cpu = run_fanout(row, seconds, data, tmp / "logs")
    else:
        pids, rate, cpu = run_server(row, seconds, data, tmp / "logs")
    counts, total = split(data, pids)
    per_req = 1e6 * cpu / max(counts["loop"] + counts["threads"], 1)
    res = {"req/s": rate, "us/req": 1e6 * cpu}
    for col in [*COLUMNS, "loop", "threads"]:
        res[col] = per_req * counts[col]
    res["others %"] = 100.0 * counts["others"] / max(total, 1)
    return res


def table(results: dict[str, list[dict[str, float]]]) -> str:
    cols = ["req/s", "us/req", *COLUMNS, "loop", "threads", "others %"]
    lines = ["| row | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for row, runs in results.items():
        med = {c: sorted(r[c] for r in runs)[len(runs) // 2] for c in cols}
        lines.append(f"| {row} | " + " | ".join(f"{med[c]:,.0f}" for c in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="cdaphne,app-alone,uvicorn,app-alone-uvloop")
    ap.add_argument("--seconds", type=float, default=4.0, help="sampled window per run")
    ap.add_argument("--reps", type=int, default=1, help="runs per row (alternating; medians)")
    ap.add_argument("--json", action="store_true", help="also print every run as JSON")
    ap.add_argument("--counts", action="store_true", help="exact counts per request instead")
    ap.add_argument("--app", choices=["django", "fanout"], default="django")
    args = ap.parse_args(argv)
    global APP, UNIT
    APP = args.app
    UNIT = "delivery" if APP == "fanout" else "request"
    if APP == "fanout" and "--rows" not in " ".join(argv or sys.argv):
        args.rows = "cdaphne,app-alone,granian,uvicorn,app-alone-uvloop"
    for tool in ("perf", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    rows = args.rows.split(",")
    for row in rows:
        if row not in ALONE and row not in servers.SPECS:
            raise SystemExit(f"unknown row {row}: {', '.join([*ALONE, *servers.SPECS])}")
        peer = ALONE.get(row) == "uvloop" or (
            row in servers.SPECS and servers.SPECS[row].venv == "peer"
        )
        if peer and not env.peer_python().exists():
            raise SystemExit(
                f"{row} needs the peers' venv {env.PEER_VENV}: `python -m bench` makes it"
            )
    if args.counts:
        return counts_main(rows, args.seconds)
    results: dict[str, list[dict[str, float]]] = {r: [] for r in rows}
    with tempfile.TemporaryDirectory(prefix="server_gap-") as tmp:
        for rep in range(args.reps):
            for row in rows[rep % len(rows) :] + rows[: rep % len(rows)]:
                res = measure(row, args.seconds, Path(tmp))
                results[row].append(res)
                if args.json:
                    print(json.dumps({"row": row, **{k: round(v, 1) for k, v in res.items()}}))
    print(f"microseconds of core 0 per {UNIT} (median of {args.reps}, {args.seconds:g} s sampled)")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
