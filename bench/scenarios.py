"""The scenarios: start the servers, check a real response, then measure, round-robin."""

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import env, latency, probes, servers, wrk, ws
from .config import Mode
from .cpu import Meter
from .results import ERROR, OK, SKIPPED, UNAVAILABLE, ScenarioResult, ServerResult
from .servers import HOST, SPECS, RunningServer, Unavailable

Log = Callable[[str], None]
Probe = Callable[[RunningServer], str | None]

DEFAULT_SERVERS = {
    "hello": ["cdaphne", "uvicorn", "granian", "hypercorn", "daphne", "fastpysgi", "ceiling"],
    "pipeline": ["cdaphne", "uvicorn", "granian", "hypercorn", "daphne", "fastpysgi", "ceiling"],
    "django": ["cdaphne", "cdaphne-no-batch", "uvicorn", "daphne", "granian"],
    "ws": ["cdaphne", "uvicorn", "granian", "daphne", "hypercorn"],
    "ws-idle": ["cdaphne", "uvicorn", "granian", "daphne", "hypercorn"],
    "ws-idle-channels": ["cdaphne", "cdaphne-layer", "daphne", "uvicorn"],
    "fanout": [
        "cdaphne", "cdaphne-no-batch", "cdaphne-layer", "uvicorn", "granian", "daphne", "hypercorn",
    ],
    "latency": ["cdaphne", "uvicorn", "granian", "hypercorn", "daphne", "fastpysgi", "ceiling"],
    # --workers 2 (bench/workers.py), with cdaphne in one process as the reference.
    "hello-w2": ["cdaphne-w2", "uvicorn-w2", "granian-w2", "cdaphne"],
    "hello-tls": ["cdaphne-tls", "uvicorn-tls", "granian-tls"],
    "chat-w2": ["cdaphne-w2", "cdaphne-w2-redis", "uvicorn-w2", "granian-w2", "cdaphne-layer"],
    # The chat room on cdaphne.pubsub against the tutorial consumer (bench/room.py).
    "room-100": ["cdaphne-pubsub", "cdaphne", "uvicorn", "granian", "daphne"],
    "room-1000": ["cdaphne-pubsub", "cdaphne", "uvicorn", "granian", "daphne"],
}


@dataclass
class Context:
    """What every scenario needs: the mode, the chosen servers, a log, a work directory."""

    mode: Mode
    selected: list[str]
    log: Log
    log_dir: Path
    peer_error: str = ""  # why the peer venv is missing, if it is
    ws_client: Path | None = None  # the compiled C echo client, if built

    def servers_for(self, scenario: str) -> list[str]:
        return [s for s in DEFAULT_SERVERS.get(scenario, []) if s in self.selected]


def _rotated(names: list[str], rep: int) -> list[str]:
    """Round-robin order for one repetition, starting one server later each time."""
    if not names:
        return names
    k = rep % len(names)
    return names[k:] + names[:k]


def _mark_all(scenarios: list[ScenarioResult], name: str, status: str, reason: str) -> None:
    for sc in scenarios:
        sc.server(name).fail(status, reason)


@contextmanager
def _started(
    ctx: Context,
    names: list[str],
    app: str,
    probe: Probe,
    scenarios: list[ScenarioResult],
    pinned: bool = True,
    extra_env: Callable[[str], dict[str, str]] | None = None,
) -> Iterator[dict[str, RunningServer]]:
    """Start each server, check one real response, and stop them all afterwards.

    pinned=False: no taskset (the --workers scenarios); extra_env(name): more
    environment for that server."""
    running: dict[str, RunningServer] = {}
    try:
        for name in names:
            spec = SPECS[name]
            if spec.venv == "peer" and ctx.peer_error:
                _mark_all(scenarios, name, UNAVAILABLE, ctx.peer_error)
                continue
            ctx.log(f"  starting {name} ({app} app)")
            try:
                srv = servers.start(
                    spec, app, ctx.log_dir, ctx.mode.startup_timeout, pinned,
                    extra_env(name) if extra_env else None,
                )  # fmt: skip
            except Unavailable as exc:
                ctx.log(f"  {name} unavailable: {str(exc)[:300]}")
                _mark_all(scenarios, name, UNAVAILABLE, str(exc))
                continue
            why = probe(srv)
            if why is not None:
                ctx.log(f"  {name} unavailable: {why}")
                _mark_all(scenarios, name, UNAVAILABLE, f"wrong response: {why}")
                srv.stop()
                continue
            running[name] = srv
        yield running
    finally:
        servers.stop_all(list(running.values()))


def _died(srv: RunningServer, res: ServerResult) -> bool:
    if srv.alive():
        return False
    res.fail(ERROR, f"server exited with code {srv.proc.returncode}: {srv.log_tail()[-400:]}")
    return True


def _cpu_medians(res: ServerResult, throughput: bool = True) -> None:
    """Median CPU % of the server tree and of the load generator over the runs.

    For throughput, also the median per server CPU-second: on a shared, noisy
    machine it shows the cost per request even when the server did not get its
    whole core.
    """
    for key in ("server_cpu_pct", "client_cpu_pct"):
        values = sorted(float(r["cpu"][key]) for r in res.runs if "cpu" in r)
        if values:
            res.extra[key] = values[len(values) // 2]
    if throughput and len(res.runs) == len(res.values):
        per_cpu = sorted(
            v / (float(r["cpu"]["server_cpu_pct"]) / 100.0)
            for v, r in zip(res.values, res.runs, strict=True)
            if "cpu" in r and float(r["cpu"]["server_cpu_pct"]) > 0
        )
        if per_cpu:
            res.extra["per_server_cpu_s"] = round(per_cpu[len(per_cpu) // 2], 1)


def http_group(
    ctx: Context,
    scenarios: list[ScenarioResult],
    app: str,
    names: list[str],
    alone: list[str] | None = None,
) -> None:
    """Scenarios sharing one app (hello and pipeline): servers started once, all alternating.
    alone: the django scenario's app-alone rows, which take their turns among the servers."""
    mode = ctx.mode
    content_type = "text/plain" if app == "hello" else None

    def probe(srv: RunningServer) -> str | None:
        return probes.http_probe(HOST, srv.port, content_type, tls=srv.spec.tls)

    with _started(ctx, names, app, probe, scenarios) as running:
        for name, srv in running.items():
            try:
                wrk.run(srv.url, mode.warmup, mode.connections)
            except wrk.WrkError as exc:
                ctx.log(f"  warm-up of {name} failed: {exc}")
        for sc in scenarios:
            depth = int(sc.params.get("depth", 1))
            wanted = ctx.servers_for(sc.key)
            eligible = [n for n in running if n in wanted and sc.server(n).status != UNAVAILABLE]
            if depth > 1:
                for name in list(eligible):
                    why = probes.pipeline_probe(HOST, running[name].port, depth)
                    if why is not None:
                        ctx.log(f"  {name}: pipelining check failed: {why}")
                        sc.server(name).fail(ERROR, f"pipelining broken: {why}")
                        eligible.remove(name)
            rows = eligible + (alone or [])
            ctx.log(f"  {sc.key}: {mode.reps} runs x {mode.duration} s, order rotates: {rows}")
            for rep in range(mode.reps):
                for name in _rotated(rows, rep):
                    if name not in running:
                        _alone_run(ctx, sc, name)
                        continue
                    srv, res = running[name], sc.server(name)
                    if _died(srv, res):
                        continue
                    if sc.key == "latency":
                        _latency_run(ctx, name, srv, res)
                    else:
                        _wrk_run(ctx, name, srv, res, depth)
                    _died(srv, res)
            for name in rows:
                res = sc.server(name)
                _cpu_medians(res, throughput=sc.key != "latency")
                if sc.key == "latency" and res.runs:
                    _latency_summary(res)


def _wrk_run(ctx: Context, name: str, srv: RunningServer, res: ServerResult, depth: int) -> None:
    mode = ctx.mode
    meter = Meter(srv.proc.pid)
    try:
        r = wrk.run(srv.url, mode.duration, mode.connections, depth=depth)
    except wrk.WrkError as exc:
        res.fail(ERROR, str(exc))
        return
    res.values.append(r.rps)
    res.runs.append({**r.as_dict(), "cpu": meter.stop()})
    res.add_errors(r.errors)
    ctx.log(f"    {name:10s} {r.rps:12,.0f} req/s  errors {r.error_count}")


def _latency_run(ctx: Context, name: str, srv: RunningServer, res: ServerResult) -> None:
    """p99 latency at the fixed rate; the run fails if the rate was not reached."""
    mode = ctx.mode
    meter = Meter(srv.proc.pid)
    try:
        r = latency.run(srv.port, mode.latency_rate, mode.latency_connections, mode.duration)
    except latency.RateClientError as exc:
        res.fail(ERROR, str(exc))
        return
    res.runs.append({**r, "cpu": meter.stop()})
    res.add_errors(r["errors"])
    if r["rate_achieved"] < 0.95 * mode.latency_rate:
        res.add_errors({"rate_not_reached": 1})
    res.values.append(float(r["latency_ms"]["p99"]))
    lat, errors = r["latency_ms"], sum(r["errors"].values())
    ctx.log(f"    {name:10s} p50 {lat['p50']:.3f} ms  p99 {lat['p99']:.3f} ms"
            f"  at {r['rate_achieved']:,.0f} req/s  errors {errors}")  # fmt: skip


def _latency_summary(res: ServerResult) -> None:
    """Median over runs of each percentile, shown next to the p99 median."""
    for key in ("p50", "p90", "p99", "p999", "max"):
        values = sorted(float(r["latency_ms"][key]) for r in res.runs)
        res.extra[f"{key}_ms"] = values[len(values) // 2]
    res.extra["summary"] = (
        f"p50 {res.extra['p50_ms']:.2f} ms, p90 {res.extra['p90_ms']:.2f},"
        f" p99.9 {res.extra['p999_ms']:.2f}, max {res.extra['max_ms']:.1f}"
    )


def ws_echo(
    ctx: Context,
    sc: ScenarioResult,
    names: list[str],
    kind: str = "echo",
    alone: list[str] | None = None,
) -> None:
    """WebSocket echo (messages per second at N connections, every echo checked), or
    kind "fanout": Channels chat-room broadcasts (deliveries per second, each checked).
    alone: the fanout scenario's app-alone rows, which take their turns among the servers."""
    mode = ctx.mode
    app = "chat" if kind == "fanout" else "echo"
    connections = mode.fanout_connections if kind == "fanout" else mode.ws_connections

    def probe(srv: RunningServer) -> str | None:
        return probes.ws_probe(HOST, srv.port)

    def once(
        srv: RunningServer, duration: int, marks: Callable[[str], None] | None = None
    ) -> ws.EchoResult:
        return ws.echo(
            srv.ws_url, connections, duration, mode.ws_message_size, mode.ws_client_procs, kind,
            c_client=ctx.ws_client, marks=marks,
        )  # fmt: skip

    with _started(ctx, names, app, probe, [sc]) as running:
        for name, srv in running.items():
            try:
                once(srv, mode.warmup)
            except ws.WsClientError as exc:
                ctx.log(f"  warm-up of {name} failed: {exc}")
        eligible = list(running)
        rows = eligible + (alone or [])
        ctx.log(f"  {sc.key}: {mode.reps} runs x {mode.duration} s, order rotates: {rows}")
        for rep in range(mode.reps):
            for name in _rotated(rows, rep):
                if name not in running:
                    _alone_run(ctx, sc, name)
                    continue
                srv, res = running[name], sc.server(name)
                if _died(srv, res):
                    continue
                meter = Meter(srv.proc.pid)
                # fanout: CPU over the client's measured window only (its
                # start-up, 100 joins, pause and closes are ~0.6 s outside a
                # 3 s window, at a fraction of the server's CPU).
                window: dict[str, Any] = {}

                def mark(
                    what: str, srv: RunningServer = srv, window: dict[str, Any] = window
                ) -> None:
                    if what == "start":
                        window["meter"] = Meter(srv.proc.pid)
                    elif what == "end" and "meter" in window:
                        window["cpu"] = window["meter"].stop()

                try:
                    r = once(srv, mode.duration, mark if kind == "fanout" else None)
                except ws.WsClientError as exc:
                    res.fail(ERROR, str(exc))
                    continue
                cpu = meter.stop()
                if "cpu" in window:
                    whole = cpu
                    cpu = {**window["cpu"], "client_cpu_pct": r.window_client_cpu_pct}
                    cpu["whole_run"] = whole
                res.values.append(r.rate)
                res.runs.append({**r.as_dict(), "cpu": cpu})
                res.add_errors(r.errors)
                if r.first_error:
                    res.extra.setdefault("first_error", r.first_error)
                ctx.log(
                    f"    {name:10s} {r.rate:12,.0f} {sc.unit}  errors {sum(r.errors.values())}"
                    f"  server cpu {res.runs[-1]['cpu']['server_cpu_pct']:.0f}%"
                    f"  client cpu {r.client_cpu_pct:.0f}%"
                )
                _died(srv, res)
        for name in rows:
            _cpu_medians(sc.server(name))


def _tree_rss(pid: int) -> int:
    import psutil

    proc = psutil.Process(pid)
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += int(p.memory_info().rss)
        except psutil.Error:
            pass
    return total


def ws_idle(ctx: Context, sc: ScenarioResult, names: list[str], app: str = "echo") -> None:
    """RSS of the server's process tree per idle WebSocket, each server started fresh.

    app "echo": the raw echo app. app "chat": the Channels room consumer
    (AsyncWebsocketConsumer, group_add on connect, an in-memory layer), every
    client a member of one room; the check that the server still answers while
    holding them is then a GET (a message would go to every member)."""
    try:
        import psutil  # noqa: F401
    except ImportError:
        sc.status, sc.reason = SKIPPED, "psutil is not installed in the runner's venv"
        return
    n = ctx.mode.idle_connections
    for name in names:

        def probe(srv: RunningServer) -> str | None:
            return probes.ws_probe(HOST, srv.port)

        with _started(ctx, [name], app, probe, [sc]) as running:
            if name not in running:
                continue
            srv, res = running[name], sc.server(name)
            time.sleep(0.5)
            before = _tree_rss(srv.proc.pid)
            clients = ws.IdleClients(srv.ws_url, n, hold=120)
            try:
                report = clients.wait_ready(timeout=120)
                time.sleep(1.0)
                after = _tree_rss(srv.proc.pid)
                if app == "chat":
                    alive_ok = probes.http_probe(HOST, srv.port, None)
                else:
                    alive_ok = probes.ws_probe(HOST, srv.port)
            except ws.WsClientError as exc:
                res.fail(ERROR, str(exc))
                continue
            finally:
                clients.close()
            connected = int(report["connected"])
            if connected < n:
                res.add_errors({"connect": n - connected})
                res.extra["first_error"] = report.get("first_error", "")
            if alive_ok is not None:
                res.fail(ERROR, f"no answer while holding {connected} connections: {alive_ok}")
            per_conn = (after - before) / max(1, connected) / 1024
            res.values.append(per_conn)
            res.runs.append(
                {
                    "rss_before_mib": round(before / 2**20, 1),
                    "rss_after_mib": round(after / 2**20, 1),
                    "connected": connected,
                }
            )
            res.extra["rss_baseline_mib"] = round(before / 2**20, 1)
            ctx.log(f"    {name:10s} {per_conn:8.1f} KiB/connection  ({connected} connected,"
                    f" baseline {before / 2**20:.1f} MiB)")  # fmt: skip


def layer(ctx: Context, sc: ScenarioResult) -> None:
    """Run bench/layer_bench.py (written on another branch) if it is here."""
    script = env.BENCH / "layer_bench.py"
    if not script.exists():
        sc.status = UNAVAILABLE
        sc.reason = "not available: bench/layer_bench.py is not on this branch yet"
        return
    out = ctx.log_dir / "layer.json"
    out.unlink(missing_ok=True)
    cmd = [str(env.project_python()), str(script), "--json", str(out)]
    if ctx.mode.name == "quick":
        cmd.append("--quick")
    timeout = 150 if ctx.mode.name == "quick" else 420
    ctx.log("  " + " ".join(cmd))
    try:
        proc = subprocess.run(cmd, cwd=env.ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        sc.status, sc.reason = ERROR, f"layer_bench.py did not finish within {timeout} s"
        return
    if proc.returncode != 0 or not out.exists():
        sc.status = ERROR
        tail = (proc.stderr or proc.stdout)[-600:]
        sc.reason = f"layer_bench.py exited {proc.returncode}: {tail}"
        return
    try:
        sc.raw = json.loads(out.read_text())
    except json.JSONDecodeError as exc:
        sc.status, sc.reason = ERROR, f"layer_bench.py wrote invalid JSON: {exc}"


APP_ALONE = {"app-alone": "cdaphne", "app-alone-uvloop": "uvloop"}  # row -> loop


# scenario -> (script, its JSON line's rate, its size argument's flag, the mode's size)
ALONE_SCRIPTS = {
    "django": ("app_alone.py", "requests_per_s", "--connections", "connections"),
    "fanout": ("chat_alone.py", "deliveries_per_s", "--members", "fanout_connections"),
}


def alone_rows(ctx: Context) -> list[str]:
    """Rows "app-alone" of the django and fanout scenarios: bench/app_alone.py (the
    view) or bench/chat_alone.py (the chat room) drives the app in one process
    pinned to the server core, on cdaphne's loop and on uvloop (each from the venv
    its server runs in); no server can beat these rows.  They take their turns in
    the servers' rotation, so a server and its app alone are measured in the same
    minutes of a machine whose speed drifts."""
    return [r for r, loop in APP_ALONE.items() if not (loop == "uvloop" and ctx.peer_error)]


def _alone_run(ctx: Context, sc: ScenarioResult, row: str) -> None:
    pythons = {"cdaphne": env.project_python(), "uvloop": env.peer_python()}
    child_env = dict(os.environ, PYTHONPATH=str(env.ROOT / "python"))
    child_env.pop("PYTHONASYNCIODEBUG", None)
    res, loop = sc.server(row), APP_ALONE[row]
    if res.status != OK:
        return
    script, rate, size_flag, size = ALONE_SCRIPTS[sc.key]
    cmd = [*servers.pin(servers.SERVER_CORE), str(pythons[loop]),
           str(env.BENCH / script), "--loop", loop,
           "--duration", str(ctx.mode.duration),
           size_flag, str(getattr(ctx.mode, size))]  # fmt: skip
    try:
        proc = subprocess.run(cmd, cwd=env.ROOT, env=child_env, capture_output=True,
                              text=True, timeout=120 + 5 * ctx.mode.duration)  # fmt: skip
    except subprocess.TimeoutExpired:
        res.fail(ERROR, f"{script} timed out")
        return
    if proc.returncode != 0 or not proc.stdout.strip():
        res.fail(ERROR, f"{script} exited {proc.returncode}: {proc.stderr[-400:]}")
        return
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    res.values.append(r[rate])
    cpu_pct = round(100.0 * r["cpu_s"] / r["seconds"], 1)
    res.runs.append({**r, "cpu": {"server_cpu_pct": cpu_pct, "client_cpu_pct": 0.0}})
    ctx.log(f"    {row:10s} {r[rate]:12,.0f} {sc.unit}  (no server, {loop} loop)")


def aio_micro(ctx: Context, sc: ScenarioResult) -> None:
    """bench/aio_micro.py: each benchmark on each loop, one process per measurement,
    the loops alternating (the first one rotates every repetition), pinned to the
    server core. The table lives in sc.raw; ratios are to uvloop."""
    from . import aio_micro as micro

    # Every loop runs on one interpreter, the peers' (it has uvloop; cdaphne comes
    # from python/ on PYTHONPATH), so all start from the same state.  A venv's
    # start-up (.venv's .pth files: setuptools' distutils hack, the editable
    # finder) decides how many types have a version tag before threading's get
    # theirs, and so which of CPython's 4,096 method-cache slots (version XOR the
    # name's address) they share: from .venv, threading.Condition.__exit__ and
    # _thread.lock.__exit__ share one, and every `with` on a Condition misses it
    # twice (threadsafe_stream: ~1,400 more instructions per callback, asyncio's
    # loop and ours alike).  Without peers, uvloop's row is unavailable.
    python = env.project_python() if ctx.peer_error else env.peer_python()
    loops = [n for n in micro.LOOPS if not (n == "uvloop" and ctx.peer_error)]
    script = env.BENCH / "aio_micro.py"
    child_env = dict(os.environ, PYTHONPATH=str(env.ROOT / "python"))
    child_env.pop("PYTHONASYNCIODEBUG", None)
    benches: dict[str, Any] = {}
    for bench, (title, op) in micro.BENCHES.items():
        rows = {n: {"values": [], "cpu_s": [], "status": "ok", "reason": ""} for n in loops}
        if ctx.peer_error:
            rows["uvloop"] = {"values": [], "status": UNAVAILABLE, "reason": ctx.peer_error}
        for rep in range(ctx.mode.reps):
            for name in _rotated(loops, rep):
                row = rows[name]
                if row["status"] != "ok":
                    continue
                cmd = [*servers.pin(servers.SERVER_CORE), str(python), str(script),
                       "--loop", name, "--bench", bench,
                       "--duration", str(ctx.mode.duration)]  # fmt: skip
                timeout = 60 + 5 * ctx.mode.duration
                try:
                    proc = subprocess.run(cmd, cwd=env.ROOT, env=child_env, capture_output=True,
                                          text=True, timeout=timeout)  # fmt: skip
                except subprocess.TimeoutExpired:
                    row["status"], row["reason"] = ERROR, "timed out"
                    continue
                if proc.returncode != 0 or not proc.stdout.strip():
                    row["status"] = ERROR
                    row["reason"] = f"exit {proc.returncode}: {proc.stderr[-400:]}"
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                row["values"].append(round(r["ops_per_s"], 1))
                row["cpu_s"].append(r["cpu_s"])
                if r["cpu_s"] > 0:  # the steadier number on a shared machine
                    row.setdefault("per_cpu_s", []).append(round(r["ops"] / r["cpu_s"], 1))
        for name, row in rows.items():
            ok = row["status"] == "ok"
            for key, med in (("values", "median"), ("per_cpu_s", "per_cpu_s_median")):
                vals = sorted(row.get(key, []))
                row[med] = vals[len(vals) // 2] if vals and ok else None
            if row["median"] is not None:
                ctx.log(f"    {bench:18s} {name:8s} {row['median']:12,.0f} ops/s"
                        f"  {row['per_cpu_s_median'] or 0:12,.0f} ops/CPU-s")  # fmt: skip
        benches[bench] = {"title": title, "op": op, "loops": rows}
    sc.raw = {"reference": "uvloop", "benches": benches}
