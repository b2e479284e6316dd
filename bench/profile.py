"""Profile one server under one bench scenario with py-spy; write a text summary.

    .venv/bin/python -m bench.profile --scenario fanout --out bench/results/profile-x.txt

Runs `python -m bench --only SCENARIO --servers SERVER --reps 1` with a long
run, attaches `py-spy record` (non-idle threads or, with --gil, the thread
holding the GIL; Python frames; --nonblocking) to
the server process once it is serving, and writes: where the samples fell by
thread, a few named buckets (inclusive %), and the top functions by self and
by inclusive samples.  The raw collapsed stacks are kept next to it
(`.collapsed.gz`, the input of any flamegraph tool).  py-spy must be installed
(`.venv/bin/pip install py-spy`; it is not a test dependency).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import env
from .servers import TARGETS

APP_OF = {"fanout": "chat", "django": "django", "ws": "echo", "hello": "hello"}
# name -> regex on a frame "function (package/file.py)" (py-spy names files from
# their sys.path entry): inclusive share of samples.
BUCKETS = {
    "asyncio BaseEventLoop._run_once (every callback runs under it)": r"\._run_once \(asyncio/",
    "  LibuvSelector.select (the libuv poll: C run_once, GIL released while waiting)": (
        r"LibuvSelector\.select "
    ),
    "  asyncio Handle._run (a callback)": r"^Handle\._run \(asyncio/",
    "  _read_from_self (self-pipe, loop side)": r"\._read_from_self ",
    "_write_to_self (self-pipe, thread side)": r"\._write_to_self ",
    "call_soon_threadsafe (any thread)": r"\.call_soon_threadsafe ",
    "concurrent.futures (submit, Future, Condition, the worker thread)": r"\(concurrent/futures/",
    "asyncio _chain_future / wrap_future / _copy_future_state": (
        r"(_chain_future|wrap_future|_copy_future_state|_call_set_state|_set_state) \(asyncio/"
    ),
    "asgiref SyncToAsync (sync_to_async)": r"SyncToAsync\.",
    "asgiref AsyncToSync / ThreadSensitiveContext / CurrentThreadExecutor": (
        r"AsyncToSync\.|ThreadSensitiveContext|CurrentThreadExecutor"
    ),
    "channels aclose_old_connections (a sync_to_async per message)": r"aclose_old_connections ",
    "channels consumer dispatch": r"\.dispatch \(channels/",
    "channels layer (group_send / receive)": r"\(channels/layers\.py",
    "Django ASGIHandler (the request, in and out of its threads)": r"ASGIHandler\.",
    "threads started/joined (Thread.start / join, executor shutdown)": (
        r"^Thread\.(start|join) |ThreadPoolExecutor\.shutdown "
    ),
    "cdaphne's Python code (self samples only)": None,
}
SELF_BUCKETS = {"cdaphne's Python code (self samples only)": r"\(cdaphne/"}


def find_server(runner_pid: int, target: str, timeout: float) -> int:
    """The pid of the runner's child serving `target`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == runner_pid and target.encode() in cmd and b"cdaphne" in b" ".join(cmd):
                return int(entry.name)
        time.sleep(0.2)
    raise SystemExit(f"no server for {target} appeared within {timeout}s")


def frame_key(frame: str) -> str:
    """'func (path/to/file.py:123)' -> 'func (to/file.py)'."""
    m = re.match(r"^(.*) \((.*?)(?::\d+)?\)$", frame)
    if not m:
        return frame
    func, path = m.groups()
    return f"{func} ({'/'.join(path.split('/')[-2:])})"


def summarise(collapsed: str, title: str) -> str:
    samples: list[tuple[list[str], int]] = []
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples.append((stack.split(";"), int(count)))
    total = sum(n for _, n in samples) or 1
    empty = sum(n for frames, n in samples
                if not [f for f in frames if not f.startswith(("thread", "process"))])  # fmt: skip
    by_thread: collections.Counter[str] = collections.Counter()
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    buckets: collections.Counter[str] = collections.Counter()
    for frames, n in samples:
        thread = frames[0] if frames and frames[0].startswith("thread") else "?"
        py = [f for f in frames if not f.startswith(("thread", "process"))]
        name = thread.split(": ", 1)[1] if ": " in thread else "(no name: short-lived threads)"
        by_thread[re.sub(r"-\d+_\d+$", "-*", name)] += n
        if py:
            self_t[frame_key(py[-1])] += n
        keys = {frame_key(f) for f in py}
        for k in keys:
            incl[k] += n
        full = [re.sub(r":\d+\)$", ")", f) for f in py]
        for name, rx in BUCKETS.items():
            if rx is not None and any(re.search(rx, f) for f in full):
                buckets[name] += n
        for name, rx in SELF_BUCKETS.items():
            if full and re.search(rx, full[-1]):
                buckets[name] += n

    def pct(n: int) -> str:
        return f"{100.0 * n / total:5.1f}%"

    out = [title, f"samples: {total} (py-spy, Python frames)"]
    out.append(f"samples with no Python frame at all: {pct(empty)} (py-spy could not see the"
               " thread's frames: C code outside any Python call, or a racy read)")  # fmt: skip
    out.append("")
    out += ["## By thread"]
    out += [f"{pct(n)}  {t}" for t, n in by_thread.most_common(8)]
    out += ["", "## Buckets (inclusive: samples with such a frame anywhere on the stack)"]
    out += [f"{pct(buckets[name])}  {name}" for name in BUCKETS]
    out += ["", "## Top 40 by self samples"]
    out += [f"{pct(n)}  {k}" for k, n in self_t.most_common(40)]
    out += ["", "## Top 50 by inclusive samples"]
    out += [f"{pct(n)}  {k}" for k, n in incl.most_common(50)]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", choices=sorted(APP_OF), required=True)
    ap.add_argument("--server", default="cdaphne")
    ap.add_argument("--seconds", type=int, default=12, help="py-spy recording time")
    ap.add_argument("--rate", type=int, default=250, help="samples per second")
    ap.add_argument("--out", type=Path, required=True, help="the text summary")
    ap.add_argument("--gil", action="store_true", help="only the thread holding the GIL")
    ap.add_argument("--native", action="store_true",
                    help="C frames too (py-spy then pauses the process per sample)")  # fmt: skip
    args = ap.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.path.exists(spy):
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    target = TARGETS[APP_OF[args.scenario]]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(env.project_python()), "-m", "bench", "--only", args.scenario,
               "--servers", args.server, "--reps", "1", "--duration", str(args.seconds + 8),
               "--out", tmp, "--name", "profile", "--no-plots"]  # fmt: skip
        runner = subprocess.Popen(cmd, cwd=env.ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            pid = find_server(runner.pid, target, 120)
            time.sleep(6)  # start-up, probe and warm-up
            raw = Path(tmp) / "stacks.txt"
            mode = ["--native"] if args.native else ["--nonblocking"]
            subprocess.run([spy, "record", "--pid", str(pid), "--duration", str(args.seconds),
                            "--rate", str(args.rate), "--threads", *mode,
                            "--format", "raw", "--output", str(raw),
                            *(["--gil"] if args.gil else [])],
                           check=True, capture_output=True, timeout=args.seconds + 60)  # fmt: skip
            _, err = runner.communicate(timeout=600)
        finally:
            if runner.poll() is None:
                runner.terminate()
                runner.wait(30)
        if runner.returncode != 0:
            raise SystemExit(f"bench run failed: {err[-1500:]}")
        collapsed = raw.read_text()
        rate = [ln for ln in err.splitlines() if args.server in ln and "/s" in ln]
        command = " ".join(argv or sys.argv[1:])
        measured = " | ".join(r.split("] ")[-1].strip() for r in rate)
        title = (f"# py-spy profile: {args.server}, scenario {args.scenario}, {args.seconds} s at"
                 f" {args.rate} Hz\n# command: python -m bench.profile {command}"
                 f"\n# the bench run's own lines: {measured}")  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(summarise(collapsed, title))
        with gzip.open(args.out.with_suffix(".collapsed.gz"), "wt") as f:
            f.write(collapsed)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
