"""Instructions per op of the aio-micro benchmarks, counted by callgrind.

    .venv/bin/python -m bench.icount --loop cdaphne --bench call_soon,sleep0
    .venv/bin/python -m bench.icount --ws      # per WebSocket echo message

Runs each benchmark of bench/aio_micro.py for a fixed number of ops under
`valgrind --tool=callgrind` twice (N and 3N ops) and prints the difference
in instructions divided by 2N: start-up, imports and warm-up cancel out, so
the number is repeatable whatever the machine's load.  Every loop runs in the
peers' interpreter (bench/.work/venv, or --peer-python), as the aio-micro
scenario runs them; without one, asyncio's and ours run in this one.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPS = {
    "call_soon": 20000,
    "call_later": 10000,
    "call_later_1ms": 10000,
    "sleep0": 10000,
    "future_switch": 10000,
    "create_task": 5000,
    "threadsafe_rt": 2000,
    "threadsafe_stream": 5000,
    "executor_rt": 1000,
    "sync_to_async_rt": 1000,
    "thread_context_rt": 300,
    "future_callback": 10240,
}

CHILD = r"""
import sys
sys.path.insert(0, {root!r})
from bench import aio_micro

class Fixed(aio_micro.Timer):
    def __init__(self, n):
        super().__init__(0)
        self.limit = n
    def over(self):
        return self.ops >= self.limit

loop = aio_micro.new_loop({loop!r})
try:
    aio_micro.FUNCS[{bench!r}](loop, Fixed(256))
    ops = aio_micro.FUNCS[{bench!r}](loop, Fixed({n}))
finally:
    loop.run_until_complete(loop.shutdown_default_executor())
    loop.close()
print("OPS", ops)
"""


# --src DIR: measure the cdaphne of another checkout (DIR/python, built in
# place), e.g. a worktree of the commit before a change.
SRC_PATH: list[str] = []


def child_env(*extra: str) -> dict[str, str]:
    parts = [*SRC_PATH, *extra, os.environ.get("PYTHONPATH", "")]
    # A fixed hash seed: dict probes (and so instruction counts) vary with it
    # by ~100 per op from run to run otherwise.
    env = {"PYTHONHASHSEED": "0", **os.environ}
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in parts if p)}


def count(python: str, loop: str, bench: str, n: int) -> tuple[int, int]:
    code = CHILD.format(root=str(ROOT), loop=loop, bench=bench, n=n)
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "cg.out")
        proc = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", python, "-c", code],
            capture_output=True,
            text=True,
            timeout=1800,
            env=child_env(),
        )
        m = re.search(r"OPS (\d+)", proc.stdout)
        ir = re.search(r"Collected : (\d+)", proc.stderr)
        if proc.returncode != 0 or not m or not ir:
            raise SystemExit(
                f"{loop} {bench} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            )
        return int(m.group(1)), int(ir.group(1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def count_ws(n: int, size: int) -> int:
    """Instructions of a cdaphne server (bench/apps/echo.py) that echoes n
    messages of size bytes to one client, one at a time."""
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "cg.out")
        env = child_env(str(ROOT / "bench/apps"))
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
             "-m", "cdaphne", "-b", "127.0.0.1", "-p", str(port), "--no-access-log", "echo:app"],
            stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        try:
            from websockets.sync.client import connect

            deadline = time.monotonic() + 120
            while True:
                try:
                    ws = connect(f"ws://127.0.0.1:{port}/", open_timeout=5, compression=None)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            payload = "x" * size
            with ws:
                for _ in range(n):
                    ws.send(payload)
                    assert ws.recv(timeout=60) == payload
        finally:
            server.send_signal(signal.SIGINT)
            _, err = server.communicate(timeout=300)
        ir = re.search(r"Collected : (\d+)", err)
        if not ir:
            raise SystemExit(f"server under callgrind failed:\n{err[-2000:]}")
        return int(ir.group(1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--loop", default="cdaphne", help="comma-separated: asyncio,uvloop,cdaphne")
    ap.add_argument("--bench", default="call_soon,call_later,sleep0,future_switch")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the op counts")
    ap.add_argument("--peer-python", default=None)
    ap.add_argument("--ws", action="store_true", help="per WebSocket echo message instead")
    ap.add_argument("--ws-size", type=int, default=64, help="message size (bytes of text)")
    ap.add_argument("--src", default=None, help="measure the cdaphne of this checkout")
    args = ap.parse_args(argv)
    if args.src:
        SRC_PATH.append(str(Path(args.src, "python").resolve()))
    if args.ws:
        n = int(2000 * args.scale)
        ir1, ir2 = count_ws(n, args.ws_size), count_ws(3 * n, args.ws_size)
        print(f"ws echo {args.ws_size} B: {(ir2 - ir1) / (2 * n):.0f} instructions/message")
        return 0
    peer = args.peer_python
    if peer is None:
        for cand in (
            ROOT / "bench/.work/venv/bin/python",
            Path("/work/main/bench/.work/venv/bin/python"),
        ):
            if cand.exists():
                peer = str(cand)
                break
    if peer is not None and not SRC_PATH:
        SRC_PATH.append(str(ROOT / "python"))  # cdaphne, in the peers' interpreter
    for bench in args.bench.split(","):
        for loop in args.loop.split(","):
            # Every loop on one interpreter, as the aio-micro scenario runs them
            # (bench/scenarios.py aio_micro says why).
            python = peer if peer is not None else sys.executable
            if loop == "uvloop" and peer is None:
                raise SystemExit("no peers' venv with uvloop: pass --peer-python")
            n = int(OPS[bench] * args.scale)
            ops1, ir1 = count(python, loop, bench, n)
            ops2, ir2 = count(python, loop, bench, 3 * n)
            print(
                f"{bench:18} {loop:8} {(ir2 - ir1) / (ops2 - ops1):9.0f} instructions/op",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
