"""Orchestrates one benchmark run: set-up, scenarios in order, JSON, Markdown and plots."""

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import env, report, room, scenarios, workers, wrk
from .config import ALL_SERVERS, FULL, QUICK, SCENARIO_TITLES, SCENARIOS, with_overrides
from .results import UNAVAILABLE, ScenarioResult
from .servers import SPECS

DEFAULT_SCENARIOS = ("hello", "pipeline", "django", "ws", "ws-idle", "layer")
WRK_SCENARIOS = ("hello", "pipeline", "django", "hello-w2", "hello-tls")
WORKER_SCENARIOS = ("hello-w2", "chat-w2")  # only with --only: unpinned, several minutes
# Not in --full: run them with --only (the rooms take several minutes each).
ONLY_SCENARIOS = (*WORKER_SCENARIOS, "aio-micro", "room-100", "room-1000")
UNITS = {"hello": "req/s", "pipeline": "req/s", "django": "req/s", "ws": "msg/s",
         "fanout": "deliveries/s", "hello-w2": "req/s", "chat-w2": "deliveries/s",
         "hello-tls": "req/s",
         "ws-idle": "KiB/connection", "ws-idle-channels": "KiB/connection",
         "latency": "ms", "layer": "", "aio-micro": "ops/s", "room-100": "deliveries/s",
         "room-1000": "deliveries/s"}  # fmt: skip


def log(message: str) -> None:
    stamp = dt.datetime.now(dt.UTC).strftime("%H:%M:%S")
    print(f"[bench {stamp}] {message}", file=sys.stderr, flush=True)


def _csv(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in items if v not in allowed]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return items


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description="cdaphne vs its peers.")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="short runs, under 3 minutes (default)")
    g.add_argument("--full", action="store_true", help="longer runs, under 15 minutes")
    p.add_argument("--only", help=f"scenarios, comma-separated: {','.join(SCENARIOS)}")
    p.add_argument("--servers", help=f"servers, comma-separated: {','.join(ALL_SERVERS)}")
    p.add_argument("--reps", type=int, help="runs per server (override the mode)")
    p.add_argument("--duration", type=int, help="seconds per run (override the mode)")
    p.add_argument("--idle", type=int, help="idle WebSockets in ws-idle* (override the mode)")
    p.add_argument("--ws-procs", type=int, help="WebSocket client processes (default 1)")
    p.add_argument(
        "--ws-client",
        choices=["c", "picows"],
        default="c",
        help="ws echo load generator: bench/ws_echo_client.c (default; picows if it cannot"
        " be built) or the picows client",
    )
    p.add_argument("--name", help="results name (default: MODE-DATE-TIME)")
    p.add_argument("--out", type=Path, default=env.RESULTS, help="results directory")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return p.parse_args(argv)


def _stamp_load(group: list[ScenarioResult]) -> None:
    load = [round(x, 2) for x in os.getloadavg()]
    for sc in group:
        sc.loadavg = load


def _needs_peers(chosen: list[str], selected: list[str]) -> bool:
    if any(
        s in chosen
        for s in (
            "ws",
            "fanout",
            "ws-idle",
            "ws-idle-channels",
            "latency",
            "chat-w2",
            "aio-micro",
            "room-100",
            "room-1000",
        )
    ):
        return True  # the picows client and uvloop live in the peer venv
    return any(
        SPECS[name].venv == "peer"
        for sc in chosen
        for name in scenarios.DEFAULT_SERVERS.get(sc, [])
        if name in selected
    )


def run(argv: list[str]) -> dict[str, Any]:
    args = parse_args(argv)
    mode = FULL if args.full else QUICK
    mode = with_overrides(mode, args.reps, args.duration)
    if args.ws_procs:
        from dataclasses import replace

        mode = replace(mode, ws_client_procs=args.ws_procs)
    if args.idle:
        from dataclasses import replace

        mode = replace(mode, idle_connections=args.idle)
    chosen = _csv(args.only, SCENARIOS, "scenario") if args.only else list(DEFAULT_SCENARIOS)
    if args.full and not args.only:
        chosen = [s for s in SCENARIOS if s not in ONLY_SCENARIOS]
    selected = _csv(args.servers, ALL_SERVERS, "server") if args.servers else list(ALL_SERVERS)
    started = dt.datetime.now(dt.UTC)
    name = args.name or f"{mode.name}-{started:%Y%m%d-%H%M%S}"
    t0 = time.monotonic()
    log_dir = env.WORK / "logs" / name
    ctx = scenarios.Context(mode=mode, selected=selected, log=log, log_dir=log_dir)
    log(f"{name}: scenarios {chosen}, servers {selected}, {mode}")

    results = {
        key: ScenarioResult(
            key, SCENARIO_TITLES[key], UNITS[key], higher_is_better=UNITS[key].endswith("/s")
        )
        for key in chosen
    }
    notes: list[str] = []
    if _needs_peers(chosen, selected):
        try:
            env.ensure_peer_venv(log)
        except (env.SetupError, subprocess.SubprocessError, OSError) as exc:
            ctx.peer_error = f"peer venv unavailable: {exc}"
            notes.append(ctx.peer_error)
    if "ceiling" in selected and ("hello" in chosen or "pipeline" in chosen):
        try:
            env.build_ceiling(log)
        except env.SetupError as exc:
            notes.append(str(exc))
            for key in ("hello", "pipeline"):
                if key in results:
                    results[key].server("ceiling").fail(UNAVAILABLE, str(exc))
            selected = [s for s in selected if s != "ceiling"]
            ctx.selected = selected
    if not wrk.available():
        for key in WRK_SCENARIOS:
            if key in results:
                results[key].status, results[key].reason = UNAVAILABLE, "wrk is not installed"

    http = [
        results[k]
        for k in ("hello", "latency", "pipeline")  # pipelining last: it may wedge a server
        if k in results and results[k].status == "ok"
    ]
    for sc in http:
        if sc.key == "latency":
            sc.params = {
                "rate_req_per_s": mode.latency_rate,
                "connections": mode.latency_connections,
                "seconds": mode.duration,
                "runs": mode.reps,
                "value": "p99 latency (median of runs)",
            }
        else:
            sc.params = {
                "connections": mode.connections,
                "depth": 1 if sc.key == "hello" else mode.pipeline_depth,
                "seconds": mode.duration,
                "runs": mode.reps,
            }
    if http:
        _stamp_load(http)
        log("scenario: " + " + ".join(sc.key for sc in http))
        names = sorted({n for sc in http for n in ctx.servers_for(sc.key)}, key=selected.index)
        scenarios.http_group(ctx, http, "hello", names)
    if "hello-tls" in results and results["hello-tls"].status == "ok":
        sc = results["hello-tls"]
        sc.params = {"connections": mode.connections, "tls": "TLS 1.3, self-signed P-256",
                     "seconds": mode.duration, "runs": mode.reps}  # fmt: skip
        sc.reference, sc.second_reference = "cdaphne-tls", "uvicorn-tls"
        _stamp_load([sc])
        log("scenario: hello-tls")
        try:
            env.tls_cert()
        except env.SetupError as exc:
            sc.status, sc.reason = UNAVAILABLE, str(exc)
        else:
            scenarios.http_group(ctx, [sc], "hello", ctx.servers_for("hello-tls"))
    if "django" in results and results["django"].status == "ok":
        sc = results["django"]
        sc.params = {"connections": mode.connections, "seconds": mode.duration, "runs": mode.reps}
        _stamp_load([sc])
        log("scenario: django")
        alone = scenarios.alone_rows(ctx)
        scenarios.http_group(ctx, [sc], "django", ctx.servers_for("django"), alone)
    if "ws" in results:
        sc = results["ws"]
        client = "picows (bench/ws_client.py)"
        if args.ws_client == "c":
            try:
                ctx.ws_client = env.build_ws_client(log)
                client = "C, epoll (bench/ws_echo_client.c)"
            except env.SetupError as exc:
                notes.append(f"{exc}; the ws scenario falls back to picows")
        sc.params = {"connections": mode.ws_connections, "message_bytes": mode.ws_message_size,
                     "client": client, "client_processes": mode.ws_client_procs,
                     "seconds": mode.duration, "runs": mode.reps}  # fmt: skip
        _stamp_load([sc])
        log("scenario: ws")
        scenarios.ws_echo(ctx, sc, ctx.servers_for("ws"))
    if "fanout" in results:
        sc = results["fanout"]
        sc.params = {"room_members": mode.fanout_connections, "message_bytes": mode.ws_message_size,
                     "layer": "Channels' InMemoryChannelLayer (cdaphne-layer: cdaphne's C layer)",
                     "seconds": mode.duration,
                     "runs": mode.reps}  # fmt: skip
        _stamp_load([sc])
        log("scenario: fanout")
        alone = scenarios.alone_rows(ctx)
        scenarios.ws_echo(ctx, sc, ctx.servers_for("fanout"), kind="fanout", alone=alone)
    if "ws-idle" in results:
        sc = results["ws-idle"]
        sc.params = {"idle_connections": mode.idle_connections}
        _stamp_load([sc])
        log("scenario: ws-idle")
        scenarios.ws_idle(ctx, sc, ctx.servers_for("ws-idle"))
    if "ws-idle-channels" in results:
        sc = results["ws-idle-channels"]
        sc.params = {
            "idle_connections": mode.idle_connections,
            "app": "Channels room consumer (bench/apps/chatroom), every client in the room",
            "layer": "Channels' InMemoryChannelLayer (cdaphne-layer: cdaphne's C layer)",
        }
        _stamp_load([sc])
        log("scenario: ws-idle-channels")
        scenarios.ws_idle(ctx, sc, ctx.servers_for("ws-idle-channels"), app="chat")
    w2_params = {"workers": 2, "pinning": "none: servers and load generator share both cores",
                 "seconds": mode.duration, "runs": mode.reps}  # fmt: skip
    if "hello-w2" in results and results["hello-w2"].status == "ok":
        sc = results["hello-w2"]
        sc.params = {"connections": mode.connections, **w2_params}
        sc.reference, sc.second_reference = "cdaphne-w2", "uvicorn-w2"
        _stamp_load([sc])
        log("scenario: hello-w2")
        workers.hello_w2(ctx, sc, ctx.servers_for("hello-w2"))
    if "chat-w2" in results:
        sc = results["chat-w2"]
        sc.params = {"room_members": mode.fanout_connections,
                     "message_bytes": mode.ws_message_size,
                     "layer": "cdaphne-w2 and cdaphne-layer: cdaphne's C layer; the others:"
                     " channels_redis RedisChannelLayer on one local redis-server (its CPU"
                     " counted as theirs)", **w2_params}  # fmt: skip
        sc.reference, sc.second_reference = "cdaphne-w2", "uvicorn-w2"
        _stamp_load([sc])
        log("scenario: chat-w2")
        workers.chat_w2(ctx, sc, ctx.servers_for("chat-w2"))
    if "aio-micro" in results:
        sc = results["aio-micro"]
        sc.params = {"loops": "stock asyncio (SelectorEventLoop), uvloop, cdaphne.loop",
                     "seconds": mode.duration, "runs": mode.reps,
                     "pinning": "one process per measurement on core 0",
                     "value": "ops/s (median of runs)"}  # fmt: skip
        _stamp_load([sc])
        log("scenario: aio-micro")
        scenarios.aio_micro(ctx, sc)
    for key, members in (("room-100", 100), ("room-1000", 1000)):
        if key in results:
            sc = results[key]
            sc.params = {"room_members": members, "message_bytes": mode.ws_message_size,
                         "client_processes": mode.room_client_procs,
                         "senders": f"{mode.room_client_procs} (one per client process, each"
                         f" with {room.WINDOW} messages in flight: the next once all of its own"
                         " members got one)",
                         "layer": "Channels' InMemoryChannelLayer (cdaphne-pubsub: none,"
                         " C fan-out)",
                         "seconds": mode.duration, "runs": mode.reps}  # fmt: skip
            sc.reference, sc.second_reference = "cdaphne-pubsub", "daphne"
            _stamp_load([sc])
            log(f"scenario: {key}")
            room.room(ctx, sc, ctx.servers_for(key), members)
    if "layer" in results:
        _stamp_load([results["layer"]])
        log("scenario: layer")
        scenarios.layer(ctx, results["layer"])

    doc: dict[str, Any] = {
        "name": name,
        "mode": mode.name,
        "command": "python -m bench " + " ".join(argv),
        "started_utc": started.isoformat(timespec="seconds"),
        "elapsed_s": round(time.monotonic() - t0, 1),
        "git": env.git_revision(),
        "machine": env.machine_info(),
        "versions": {
            "project venv (.venv, runs cdaphne)": env.distribution_versions(
                env.project_python(), ["cdaphne", "django", "channels", "asgiref"]
            ),
        },
        "servers": {
            n: SPECS[n].description
            for n in selected
            if any(n in r.servers for r in results.values())
        },
        "parameters": mode.__dict__,
        "scenarios": {k: r.as_dict() for k, r in results.items()},
        "notes": notes,
    }
    if env.peer_python().exists():
        doc["versions"]["peer venv (bench/.work/venv)"] = env.distribution_versions(
            env.peer_python(), env.PEER_DISTRIBUTIONS
        )
    write(doc, args.out, plots=not args.no_plots)
    return doc


def write(doc: dict[str, Any], out: Path, plots: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{doc['name']}.json"
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    md = report.markdown(doc)
    (out / "latest.md").write_text(md)
    log(f"wrote {json_path} and {out / 'latest.md'}")
    if plots and env.peer_python().exists():
        proc = subprocess.run(
            [str(env.peer_python()), "-m", "bench.plot", str(json_path), str(out)],
            cwd=env.ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode == 0:
            log("plots: " + " ".join(proc.stdout.split()))
        else:
            log(f"plotting failed: {proc.stderr[-600:]}")
    print(md)
