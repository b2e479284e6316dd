"""Instructions per request of one server on one bench app, under callgrind.

    .venv/bin/python -m bench.callgrind --server cdaphne --app django -n 400
    .venv/bin/python -m bench.callgrind --server uvicorn --app django -n 400 --keep

Starts the server under `valgrind --tool=callgrind` (every thread counted
together), warms it up, zeroes the counters, sends exactly N GET / requests
over C keep-alive connections (each connection one request at a time, the
next sent when the response is complete), dumps the counters and prints the
instructions per request.  Instruction counts do not depend on the machine's
load, so two runs on a busy machine compare; the small part that does
(how many requests one loop iteration finds ready) is why the client keeps
C connections busy the same way on every run.  With --keep the callgrind
output stays in bench/.work/callgrind/ for `callgrind_annotate`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import env
from .servers import HOST, TARGETS, free_port

OUT_DIR = env.WORK / "callgrind"
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\n\r\n"


def server_argv(server: str, target: str, port: int) -> list[str]:
    if server == "cdaphne":
        return [
            str(env.project_python()), "-m", "cdaphne", "-b", HOST, "-p", str(port),
            "--no-access-log", target,
        ]  # fmt: skip
    if server == "uvicorn":
        return [
            str(env.peer_python()), "-m", "uvicorn", target, "--host", HOST,
            "--port", str(port), "--http", "httptools", "--loop", "uvloop",
            "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
    if server == "granian":
        return [
            str(env.peer_python()), "-m", "granian", "--interface", "asgi", "--host", HOST,
            "--port", str(port), "--workers", "1", "--log-level", "warning", target,
        ]  # fmt: skip
    raise SystemExit(f"unknown server {server} (cdaphne, uvicorn or granian)")


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"server did not listen within {timeout}s")


async def one_conn(port: int, count: int) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    for _ in range(count):
        writer.write(REQUEST)
        head = await reader.readuntil(b"\r\n\r\n")
        m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
        if not head.startswith(b"HTTP/1.1 200") or m is None:
            raise SystemExit(f"bad response head: {head!r}")
        await reader.readexactly(int(m.group(1)))
    writer.close()
    await writer.wait_closed()


async def load(port: int, total: int, conns: int) -> None:
    per = [total // conns + (1 if i < total % conns else 0) for i in range(conns)]
    await asyncio.gather(*(one_conn(port, n) for n in per if n))


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminates a server under callgrind (which writes its last dump)."""
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True,
                   timeout=120)  # fmt: skip


def total_ir(out_dir: Path, prefix: str) -> tuple[int, Path]:
    """The Ir of the newest dump after the zeroing (callgrind numbers them)."""
    dumps = sorted(out_dir.glob(prefix + ".*"), key=lambda p: p.stat().st_mtime)
    for path in reversed(dumps):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1]), path
    raise SystemExit(f"no callgrind dump in {out_dir}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="cdaphne")
    ap.add_argument("--app", default="django", choices=sorted(TARGETS))
    ap.add_argument("-n", type=int, default=400, help="requests counted")
    ap.add_argument("-c", type=int, default=4, help="connections")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--keep", action="store_true", help="keep the callgrind output")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    prefix = f"{args.server}-{args.app}-{os.getpid()}"
    port = free_port()
    argv = [
        "valgrind", "--tool=callgrind", "--quiet",
        f"--callgrind-out-file={OUT_DIR / prefix}.%p",
        *server_argv(args.server, TARGETS[args.app], port),
    ]  # fmt: skip
    child_env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(env.APPS), str(env.ROOT / "python")])
    )
    child_env.pop("DJANGO_SETTINGS_MODULE", None)
    log = open(OUT_DIR / f"{prefix}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(argv, cwd=env.APPS, env=child_env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    try:
        wait_port(port, proc, 300)
        asyncio.run(load(port, args.warmup, args.c))
        control(proc.pid, "-z")
        t0 = time.monotonic()
        asyncio.run(load(port, args.n, args.c))
        took = time.monotonic() - t0
        control(proc.pid, "-d")
        ir, path = total_ir(OUT_DIR, prefix)
    finally:
        stop(proc)
        log.close()
    print(f"{args.server} {args.app}: {ir / args.n:,.0f} instructions/request "
          f"({args.n} requests, {args.c} connections, {took:.1f} s under callgrind)")  # fmt: skip
    if args.keep:
        print(f"callgrind output: {path}")
    else:
        for p in OUT_DIR.glob(prefix + "*"):
            p.unlink()


if __name__ == "__main__":
    sys.exit(main())
