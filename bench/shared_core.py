"""Latency at a fixed rate when the server's core is shared with a busy process:

    .venv/bin/python -m bench.shared_core --app hello --rate 2000 --runs 3

cdaphne pinned to core 0 three ways, alternating: the default (`--sched-batch`:
SCHED_BATCH for the loop's thread only while thread hops are out), every thread
under SCHED_BATCH (`chrt -b 0`: the first form of --sched-batch) and
`--sched-batch false`; each with and without a busy-looping process on core 0 (--app long-hop:
hello world while a run_in_executor of a second is always out).
bench/rate_client.py (peer venv, core 1) sends the rate over 10 connections for
--seconds and reports percentiles counted from when each request was due.
Prints one markdown row per configuration with the runs' p50, p90 and p99 (ms).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from . import env, latency, servers
from .servers import SERVER_CORE, pin

APPS = {
    "hello": "hello:app",
    "long-hop": "longhop:app",  # hello world with a hop always out for a second
    "django": "djhello.asgi:application",
}
MODES = {
    "default": ([], []),
    "all threads SCHED_BATCH (chrt -b 0)": (["chrt", "-b", "0"], []),
    "--sched-batch false": ([], ["--sched-batch", "false"]),
}
PORT = 8431


def one_run(
    app: str, prefix: list[str], flags: list[str], busy: bool, args: argparse.Namespace
) -> dict[str, float]:
    cdaphne = servers._cdaphne(APPS[app], PORT)
    cmd = [*pin(SERVER_CORE), *prefix, *cdaphne[:-1], *flags, cdaphne[-1]]
    srv = subprocess.Popen(cmd, cwd=env.BENCH / "apps", stderr=subprocess.DEVNULL)
    hog = None
    try:
        time.sleep(2)
        if busy:
            hog = subprocess.Popen([*pin(SERVER_CORE), sys.executable, "-c", "while True: pass"])
            time.sleep(0.3)
        report = latency.run(PORT, args.rate, 10, args.seconds)
    finally:
        for p in (hog, srv):
            if p is not None:
                p.terminate()
                p.wait()
    if report["errors"] != {"connect": 0, "bad_response": 0, "timeout_or_closed": 0}:
        raise SystemExit(f"rate client errors: {report['errors']}")
    got: dict[str, float] = report["latency_ms"]
    return got


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--app", choices=APPS, default="hello")
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    got: dict[tuple[bool, str], list[dict[str, float]]] = {}
    for _ in range(args.runs):
        for busy in (False, True):
            for mode, (prefix, flags) in MODES.items():
                run = one_run(args.app, prefix, flags, busy, args)
                got.setdefault((busy, mode), []).append(run)
    print(f"{args.app} at {args.rate} req/s, {args.runs} runs each (ms)\n")
    print("| busy process on the core | cdaphne | p50 | p90 | p99 |\n|---|---|---|---|---|")
    for (busy, mode), runs in got.items():
        cells = [" / ".join(f"{r[k]:.2f}" for r in runs) for k in ("p50", "p90", "p99")]
        print(f"| {'yes' if busy else 'no'} | {mode} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
