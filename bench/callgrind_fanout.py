"""Instructions per delivery of the chat fan-out, counted by callgrind.

    .venv/bin/python -m bench.callgrind_fanout --layer channels --out /tmp/cg-channels
    .venv/bin/python -m bench.callgrind_fanout --layer cdaphne --members 100 --messages 40

Starts cdaphne with the bench's chat room (bench/apps/chatroom: the Channels
tutorial consumer, group_send to every member) under
`valgrind --tool=callgrind --instr-atstart=no`, joins --members clients (the
`websockets` client, in this process: it is not measured), sends --warmup
broadcasts, each awaited at every member, then switches instrumentation on
(`callgrind_control -i on`), sends --messages broadcasts the same way, dumps
and stops.  Prints the instructions counted per delivery (broadcasts x
members) and writes the callgrind file (`callgrind_annotate` reads it), plus a
summary by shared object (self cost), the top functions and the inclusive
cost of the server's C entry points.  The client offers no
permessage-deflate (as the bench's picows client).

    .venv/bin/python -m bench.callgrind_fanout --show FILE --messages 30 --callees cd_hop_drain

reads an existing dump (per-delivery figures need the run's --messages and
--members) and, with --callees, lists what those functions call.

--python runs the server under `python -X perf` and adds the inclusive
instructions of every Python function (callgrind sees the interpreter's
perf trampolines; the map the interpreter writes names them): the split
between the app (Channels, asgiref, asyncio) and the server.

--layer picks the app's CHANNEL_LAYERS backend: `channels` (Channels'
InMemoryChannelLayer, the bench's `cdaphne` entry) or `cdaphne`
(cdaphne.layers.InMemoryChannelLayer, the `cdaphne-layer` entry).  Counts are
repeatable whatever the machine's load (a few 0.1% between runs): compare
before/after a change with the same arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

from . import env
from .callgrind import control, stop, wait_port
from .servers import HOST, TARGETS, free_port

LAYERS = {
    "channels": "channels.layers.InMemoryChannelLayer",
    "cdaphne": "cdaphne.layers.InMemoryChannelLayer",
}


async def _room(port: int, members: int, warmup: int, messages: int, pid: int) -> None:
    import websockets

    url = f"ws://{HOST}:{port}/"
    socks = []
    for _ in range(members):
        socks.append(
            await websockets.connect(url, max_queue=None, open_timeout=120, compression=None)
        )

    async def broadcast(seq: int) -> None:
        text = f"seq {seq} " + "x" * 52
        await socks[0].send(text)
        for s in socks:
            got = await asyncio.wait_for(s.recv(), 120)
            if got != text:
                raise SystemExit(f"member got {got!r}, expected {text!r}")

    for i in range(warmup):
        await broadcast(i)
    control(pid, "-i", "on")
    for i in range(messages):
        await broadcast(warmup + i)
    control(pid, "-d")
    control(pid, "-i", "off")
    for s in socks:
        await s.close()


def _total(path: Path) -> int:
    """Instructions of a dump made by `callgrind_control -d` (0 for others: the
    dump at exit holds only what ran after it)."""
    text = path.read_text(errors="replace")
    if "desc: Trigger: dump" not in text:
        return 0
    for line in text.splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    return 0


Edges = dict[str, dict[str, int]]


def _parse(
    path: Path, edges: Edges | None = None, calls: dict[str, int] | None = None
) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """Self and inclusive Ir per (function, object) from a callgrind file
    (inclusive = self + the cost of every call it makes; a recursive
    function counts its inner calls twice).  edges, if given, receives
    caller -> callee -> inclusive Ir of those calls; calls, if given,
    callee -> how many times it was called."""
    names: dict[str, dict[str, str]] = {"ob": {}, "fn": {}}
    self_ir: dict[tuple[str, str], int] = {}
    incl: dict[tuple[str, str], int] = {}
    ob = fn = cfn = ""
    in_call = False

    def name(kind: str, value: str) -> str:
        m = re.match(r"\((\d+)\)\s*(.*)", value)
        if not m:
            return value
        if m.group(2):
            names[kind][m.group(1)] = m.group(2)
        return names[kind].get(m.group(1), value)

    for line in path.read_text(errors="replace").splitlines():
        if not line:
            continue
        c = line[0]
        if c.isdigit() or c in "+-*":
            parts = line.split()
            ir = int(parts[1]) if len(parts) > 1 else 0
            key = (fn, ob)
            if in_call:
                incl[key] = incl.get(key, 0) + ir
                in_call = False
                if edges is not None:
                    callees = edges.setdefault(fn, {})
                    callees[cfn] = callees.get(cfn, 0) + ir
            else:
                self_ir[key] = self_ir.get(key, 0) + ir
                incl[key] = incl.get(key, 0) + ir
            continue
        tag, _, value = line.partition("=")
        if tag == "ob":
            ob = os.path.basename(name("ob", value))
        elif tag == "cob":
            name("ob", value)
        elif tag == "fn":
            fn = name("fn", value)
        elif tag == "cfn":
            cfn = name("fn", value)
        elif tag == "calls":
            in_call = True
            if calls is not None:
                n = int(value.split()[0])
                calls[cfn] = calls.get(cfn, 0) + n
    return self_ir, incl


# C entry points whose inclusive cost is worth a line (the server's parts).
WATCH = (
    "cd_hop_drain",
    "cd_hop_wrap",
    "hop_call",
    "Core_group_send",
    "Core_send",
    "Receive_am_send",
    "cd_receive_start",
    "cd_receive_resume",
    "cd_wake_all",
    "cd_copy_message",
    "cd_loop_select",
    "cd_sched_step",
    "uv_run",
    "take_gil",
    "drop_gil",
    "PyEval_RestoreThread",
    "PyEval_SaveThread",
    "gc_collect_main",
    "ws_send",
    "cd_deflate_compress",
)


def _annotate(path: Path, deliveries: int, top: int, members: int = 0) -> str:
    """Self cost by shared object, the top functions, and the inclusive cost
    of the server's entry points, per delivery; with members, the cyclic
    GC's work: GC-tracked allocations per delivery (calls of
    _PyObject_GC_Link) and collections per broadcast (gc_collect_main)."""
    calls: dict[str, int] = {}
    self_ir, incl = _parse(path, calls=calls)
    by_obj: dict[str, int] = {}
    for (_, obj), ir in self_ir.items():
        by_obj[obj] = by_obj.get(obj, 0) + ir
    lines = []
    if members:
        broadcasts = max(1, deliveries // members)
        lines += [
            "## cyclic GC",
            f"{calls.get('_PyObject_GC_Link', 0) / deliveries:10,.1f}  GC-tracked allocations"
            " per delivery",
            f"{calls.get('gc_collect_main', 0) / broadcasts:10,.2f}  collections per broadcast",
            "",
        ]
    lines.append("## self instructions per delivery, by object")
    for obj, ir in sorted(by_obj.items(), key=lambda kv: -kv[1]):
        if ir >= deliveries:
            lines.append(f"{ir / deliveries:10,.0f}  {obj}")
    lines.append(f"\n## top {top} functions, self instructions per delivery")
    ranked = sorted(self_ir.items(), key=lambda kv: -kv[1])[:top]
    for (fn, obj), ir in ranked:
        lines.append(f"{ir / deliveries:10,.0f}  {fn} [{obj}]")
    lines.append("\n## inclusive instructions per delivery (server entry points)")
    for (fn, obj), ir in sorted(incl.items(), key=lambda kv: -kv[1]):
        if fn.split("'")[0] in WATCH or fn.startswith(("cd_", "Core_", "Receive_")):
            if ir >= deliveries // 10:
                lines.append(f"{ir / deliveries:10,.0f}  {fn} [{obj}]")
    return "\n".join(lines)


def _python_table(path: Path, perf_map: Path, deliveries: int, top: int) -> str:
    """Inclusive instructions per delivery of each Python function, from a
    run under `python -X perf`: every Python call then goes through its own
    trampoline (no inlined calls: the totals grow ~15%), which the map
    written by the interpreter names."""
    import bisect

    entries = []
    for line in perf_map.read_text(errors="replace").splitlines():
        start, size, name = line.split(" ", 2)
        entries.append((int(start, 16), int(size, 16), name.removeprefix("py::")))
    entries.sort()
    starts = [e[0] for e in entries]
    _, incl = _parse(path)
    per_fn: dict[str, int] = {}
    for (fn, _obj), ir in incl.items():
        m = re.match(r"0x([0-9a-f]+)", fn)
        if not m:
            continue
        addr = int(m.group(1), 16)
        i = bisect.bisect_right(starts, addr) - 1
        if i >= 0 and addr < entries[i][0] + entries[i][1]:
            name = entries[i][2]
            per_fn[name] = per_fn.get(name, 0) + ir
    lines = [f"## top {top} Python functions, inclusive instructions per delivery"]
    for name, ir in sorted(per_fn.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{ir / deliveries:10,.0f}  {name.replace(str(env.ROOT) + '/', '')}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--layer", choices=sorted(LAYERS), default="cdaphne")
    p.add_argument("--members", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--messages", type=int, default=30)
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--out", default="", help="callgrind file (default: a temp path)")
    p.add_argument("--show", default="", help="no run: annotate this existing callgrind file")
    p.add_argument(
        "--callees", default="", help="with --show: comma-separated functions whose callees to list"
    )
    p.add_argument(
        "--python", action="store_true",
        help="run under `python -X perf` and add inclusive costs of Python functions",
    )  # fmt: skip
    p.add_argument("--perf-map", default="", help="with --show: the run's perf map (FILE.perfmap)")
    args = p.parse_args()
    if args.show:
        deliveries = args.messages * args.members
        if args.perf_map:
            print(_python_table(Path(args.show), Path(args.perf_map), deliveries, args.top))
            return
        if args.callees:
            edges: Edges = {}
            _parse(Path(args.show), edges)
            for fn in args.callees.split(","):
                print(f"## {fn}: callees, inclusive instructions per delivery")
                for callee, ir in sorted(edges.get(fn, {}).items(), key=lambda kv: -kv[1]):
                    if ir >= deliveries // 10:
                        print(f"{ir / deliveries:10,.0f}  {callee}")
            return
        print(_annotate(Path(args.show), deliveries, args.top, args.members))
        return
    out = Path(args.out or f"/tmp/callgrind-fanout-{args.layer}-{os.getpid()}.out")
    port = free_port()
    child_env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(env.APPS), str(env.ROOT / "python")]),
        BENCH_CHANNEL_LAYER=LAYERS[args.layer],
    )
    child_env.pop("DJANGO_SETTINGS_MODULE", None)
    argv = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
        str(env.project_python()), *(["-X", "perf"] if args.python else []),
        "-m", "cdaphne", "-b", HOST, "-p", str(port), "--no-access-log", TARGETS["chat"],
    ]  # fmt: skip
    log = open(f"{out}.log", "wb")
    proc = subprocess.Popen(
        argv, cwd=env.APPS, env=child_env, stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_port(port, proc, 300)
        asyncio.run(_room(port, args.members, args.warmup, args.messages, proc.pid))
    finally:
        stop(proc)
        log.close()
    dumps = sorted(out.parent.glob(out.name + "*"), key=lambda q: q.stat().st_mtime)
    dumps = [d for d in dumps if not d.name.endswith(".log") and _total(d) > 0]
    if not dumps:
        raise SystemExit("no callgrind dump with counts")
    dump = max(dumps, key=_total)
    deliveries = args.messages * args.members
    total = _total(dump)
    print(f"# callgrind fan-out: layer {args.layer}, {args.members} members, "
          f"{args.messages} broadcasts measured after {args.warmup}")  # fmt: skip
    print(f"# file: {dump}")
    print(f"instructions per delivery: {total / deliveries:,.0f}  (total {total:,})")
    print(_annotate(dump, deliveries, args.top, args.members))
    if args.python:
        perf_map = Path(f"{out}.perfmap")
        perf_map.write_bytes(Path(f"/tmp/perf-{proc.pid}.map").read_bytes())
        print(f"\n# perf map: {perf_map}")
        print(_python_table(dump, perf_map, deliveries, args.top))


if __name__ == "__main__":
    sys.exit(main())
