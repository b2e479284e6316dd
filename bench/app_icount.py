"""Instructions per request of the Django view with no server (bench/app_alone.py),
counted by callgrind on every thread (callgrind serializes them):

    .venv/bin/python -m bench.app_icount --loop cdaphne,uvloop --requests 200

Runs the app alone for N and 3N requests (50 connections) under
`valgrind --tool=callgrind` with PYTHONHASHSEED=0 and prints the difference in
instructions divided by 2N: start-up, imports and warm-up cancel out.
--keep DIR keeps both callgrind files (callgrind_annotate the pair to split the
cost per function).  uvloop runs in the peers' venv (bench/.work/venv).

    .venv/bin/python -m bench.app_icount --app chat --loop cdaphne --requests 20

--app chat counts the chat fan-out with no server instead (bench/chat_alone.py:
--members consumers, --requests broadcasts, one at a time) and prints
instructions per delivery (broadcasts x members), the figure to hold against
`bench.callgrind_fanout --layer channels` (the same room through the server).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import asyncio, os, sys
sys.path.insert(0, {bench!r})
import app_alone
from aio_micro import new_loop
from djhello.asgi import application

async def drive(n, connections):
    for _ in range(100):
        await app_alone.one_request(application)
    left = n
    async def connection():
        nonlocal left
        while left > 0:
            left -= 1
            await app_alone.one_request(application)
    await asyncio.gather(*(connection() for _ in range(connections)))

loop = new_loop({loop!r})
loop.run_until_complete(drive({n}, {connections}))
print("DONE", flush=True)
os._exit(0)
"""


CHILD_CHAT = r"""
import os, sys
sys.path.insert(0, {bench!r})
import chat_alone
from aio_micro import new_loop
from chatroom.asgi import application

loop = new_loop({loop!r})
loop.run_until_complete(chat_alone.drive(application, 0.0, {connections}, {n}))
print("DONE", flush=True)
os._exit(0)
"""


def count(python: str, loop: str, n: int, connections: int, out: Path, app: str = "django") -> int:
    child = CHILD_CHAT if app == "chat" else CHILD
    code = child.format(bench=str(ROOT / "bench"), loop=loop, n=n, connections=connections)
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", python, "-c", code],
        capture_output=True, text=True, env=env, timeout=3000,
    )  # fmt: skip
    if "DONE" not in proc.stdout:
        raise SystemExit(f"run failed:\n{proc.stderr[-2000:]}")
    m = re.search(r"Collected : (\d+)", proc.stderr)
    if m is None:
        raise SystemExit(f"no instruction count:\n{proc.stderr[-2000:]}")
    return int(m.group(1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--loop", default="cdaphne,uvloop")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--peer-python", default=None)
    ap.add_argument("--keep", default=None, help="directory for the callgrind files")
    ap.add_argument("--app", choices=["django", "chat"], default="django")
    ap.add_argument("--members", type=int, default=100, help="--app chat: room members")
    args = ap.parse_args(argv)
    chat = args.app == "chat"
    width = args.members if chat else args.connections
    peer = args.peer_python
    for cand in (
        ROOT / "bench/.work/venv/bin/python",
        Path("/work/main/bench/.work/venv/bin/python"),
    ):
        if peer is None and cand.exists():
            peer = str(cand)
    keep = Path(args.keep or "/tmp")
    keep.mkdir(parents=True, exist_ok=True)
    n = args.requests
    for loop in args.loop.split(","):
        python = peer if loop == "uvloop" else sys.executable
        if python is None:
            raise SystemExit("no peers' venv with uvloop: pass --peer-python")
        ir1 = count(python, loop, n, width, keep / f"cg.{args.app}.{loop}.{n}", args.app)
        ir3 = count(python, loop, 3 * n, width, keep / f"cg.{args.app}.{loop}.{3 * n}", args.app)
        per, unit = (2 * n * args.members, "delivery") if chat else (2 * n, "request")
        print(f"{loop}: {(ir3 - ir1) / per:.0f} instructions/{unit}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
