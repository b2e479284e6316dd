"""The --workers scenarios: hello-w2 and chat-w2 (issue 13, "Prove it").

cdaphne --workers 2 against uvicorn --workers 2 and Granian --workers 2, with
cdaphne in one process as the reference, all started once and measured
round-robin as the other scenarios are. Unlike them nothing is pinned: the two
workers and the load generator share the machine's two cores, so next to the
wall-clock rate each run records the CPU seconds of the server's whole process
tree (supervisor and workers; plus redis-server for the servers whose channel
layer is channels_redis) and the rate per server CPU-second.

chat-w2 is the Channels chat room of `fanout` (100 members, one sender, every
member must receive each message before the next): each server needs a layer
that spans its workers, cdaphne its C layer (relayed by the supervisor), the
peers channels_redis on a redis-server this module starts on a free loopback
port. During each run the members' connections are counted per worker process,
to show that the room really spans both workers.
"""

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from . import probes, wrk, ws
from .cpu import Meter
from .results import ERROR, UNAVAILABLE, ScenarioResult, ServerResult
from .scenarios import Context, _cpu_medians, _died, _rotated, _started
from .servers import HOST, REDIS_LAYER, SPECS, RunningServer

Once = Callable[[RunningServer], tuple[float, dict[str, Any], dict[str, int], str]]


def _uses_redis(name: str) -> bool:
    return REDIS_LAYER in SPECS[name].env


class RedisServer:
    """A throwaway redis-server on a free loopback port, no persistence."""

    def __init__(self, log_dir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        with socket.socket() as s:
            s.bind((HOST, 0))
            self.port = s.getsockname()[1]
        log_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no",
             "--dir", str(log_dir), "--logfile", str(log_dir / "redis-server.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection((HOST, self.port), timeout=1) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("redis-server did not answer PING within 10 s")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _cpu_by_process(pid: int) -> dict[int, float]:
    out: dict[int, float] = {}
    for p in _tree(pid):
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


class Sampler:
    """Counts, every 0.2 s, the established connections to `port` held by each
    process of the server's tree, and keeps the sample with the most in all."""

    def __init__(self, pid: int, port: int) -> None:
        self.pid, self.port = pid, port
        self.best: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for p in _tree(self.pid):
            try:
                conns = p.net_connections(kind="tcp")
            except psutil.Error:
                continue
            n = sum(1 for c in conns if c.status == psutil.CONN_ESTABLISHED
                    and c.laddr and c.laddr.port == self.port)  # fmt: skip
            counts[p.pid] = n
        return counts

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            counts = self._sample()
            if sum(counts.values()) > sum(self.best.values()):
                self.best = counts

    def stop(self) -> list[int]:
        """Connections per process that held any, most first."""
        self._stop.set()
        self._thread.join(timeout=5)
        return sorted((n for n in self.best.values() if n), reverse=True)


def _split(before: dict[int, float], after: dict[int, float], root: int, wall: float) -> dict:
    """CPU % of the root process (supervisor) and of each other process, most first."""
    pct = {p: 100.0 * (after[p] - before.get(p, 0.0)) / wall for p in after}
    others = sorted((round(v, 1) for p, v in pct.items() if p != root), reverse=True)
    return {"root_cpu_pct": round(pct.get(root, 0.0), 1), "children_cpu_pct": others}


def _measure(
    ctx: Context, sc: ScenarioResult, running: dict[str, RunningServer], once: Once,
    redis: RedisServer | None, count_members: bool,
) -> None:  # fmt: skip
    """Round-robin runs; every run's errors, CPU (tree + redis) and spread recorded."""
    mode = ctx.mode
    eligible = list(running)
    ctx.log(f"  {sc.key}: {mode.reps} runs x {mode.duration} s, order rotates: {eligible}")
    for rep in range(mode.reps):
        for name in _rotated(eligible, rep):
            srv, res = running[name], sc.server(name)
            if _died(srv, res):
                continue
            with_redis = redis is not None and _uses_redis(name)
            meter = Meter(srv.proc.pid)
            redis_meter = Meter(redis.proc.pid) if with_redis and redis else None
            t0, per_proc0 = time.monotonic(), _cpu_by_process(srv.proc.pid)
            sampler = Sampler(srv.proc.pid, srv.port) if count_members else None
            try:
                rate, run, errors, first_error = once(srv)
            except (wrk.WrkError, ws.WsClientError) as exc:
                res.fail(ERROR, str(exc))
                continue
            finally:
                members = sampler.stop() if sampler else []
            cpu = meter.stop()
            wall = max(1e-6, time.monotonic() - t0)
            cpu.update(_split(per_proc0, _cpu_by_process(srv.proc.pid), srv.proc.pid, wall))
            if redis_meter is not None:
                redis_pct = float(redis_meter.stop()["server_cpu_pct"])
                cpu["redis_cpu_pct"] = redis_pct
                cpu["server_tree_cpu_pct"] = cpu["server_cpu_pct"]
                cpu["server_cpu_pct"] = round(float(cpu["server_cpu_pct"]) + redis_pct, 1)
            run["cpu"] = cpu
            if count_members:
                run["members_per_process"] = members
            res.values.append(rate)
            res.runs.append(run)
            res.add_errors(errors)
            if first_error:
                res.extra.setdefault("first_error", first_error)
            spread = f"  members/process {members}" if count_members else ""
            redis_note = f" (redis {cpu['redis_cpu_pct']:.0f}%)" if with_redis else ""
            ctx.log(
                f"    {name:16s} {rate:10,.0f} {sc.unit}  errors {sum(errors.values())}"
                f"  server cpu {float(cpu['server_cpu_pct']):.0f}%{redis_note}"
                f" workers {cpu['children_cpu_pct']}"
                f"  client cpu {float(cpu['client_cpu_pct']):.0f}%{spread}"
            )
            _died(srv, res)
    for name in eligible:
        _cpu_medians(sc.server(name))
        _summarize(sc.server(name), count_members)


def _summarize(res: ServerResult, count_members: bool) -> None:
    """The last run's worker CPU split (and member spread) as a note in the table."""
    if not res.runs:
        return
    cpu = res.runs[-1]["cpu"]
    parts = []
    if cpu.get("children_cpu_pct"):
        parts.append(f"CPU % root {cpu['root_cpu_pct']:.0f}, children {cpu['children_cpu_pct']}")
    if "redis_cpu_pct" in cpu:
        parts.append(f"redis-server {cpu['redis_cpu_pct']:.0f}% (counted in srv)")
    if count_members:
        parts.append(f"members per process {res.runs[-1].get('members_per_process')}")
    if parts:
        res.extra["summary"] = "; ".join(parts) + " (last run)"


def _vs_single(sc: ScenarioResult, multi: str, single: str) -> None:
    """Per server CPU-second of `multi` over that of `single` (the crossing cost)."""
    a = sc.servers.get(multi)
    b = sc.servers.get(single)
    if a is None or b is None:
        return
    x, y = a.extra.get("per_server_cpu_s"), b.extra.get("per_server_cpu_s")
    if x and y:
        ratio = round(float(x) / float(y), 2)
        sc.params[f"per server CPU-s, {multi} ÷ {single}"] = ratio
        a.extra["vs_single_worker_per_cpu_s"] = ratio


def hello_w2(ctx: Context, sc: ScenarioResult, names: list[str]) -> None:
    mode = ctx.mode

    def probe(srv: RunningServer) -> str | None:
        return probes.http_probe(HOST, srv.port, "text/plain")

    def once(srv: RunningServer) -> tuple[float, dict[str, Any], dict[str, int], str]:
        r = wrk.run(srv.url, mode.duration, mode.connections, pinned=False)
        return r.rps, r.as_dict(), r.errors, ""

    with _started(ctx, names, "hello", probe, [sc], pinned=False) as running:
        for name, srv in running.items():
            try:
                wrk.run(srv.url, mode.warmup, mode.connections, pinned=False)
            except wrk.WrkError as exc:
                ctx.log(f"  warm-up of {name} failed: {exc}")
        _measure(ctx, sc, running, once, None, count_members=False)
    _vs_single(sc, "cdaphne-w2", "cdaphne")


def chat_w2(ctx: Context, sc: ScenarioResult, names: list[str]) -> None:
    mode = ctx.mode
    redis: RedisServer | None = None
    if any(_uses_redis(n) for n in names):
        try:
            redis = RedisServer(ctx.log_dir / "redis")
        except RuntimeError as exc:
            for n in names:
                if _uses_redis(n):
                    sc.server(n).fail(UNAVAILABLE, str(exc))
            names = [n for n in names if not _uses_redis(n)]
    if redis is not None:
        ctx.log(f"  redis-server on {redis.url} for {[n for n in names if _uses_redis(n)]}")

    def extra_env(name: str) -> dict[str, str]:
        if redis is None or not _uses_redis(name):
            return {}
        return {"BENCH_REDIS_URL": redis.url, "BENCH_REDIS_PREFIX": f"bench-{name}"}

    def probe(srv: RunningServer) -> str | None:
        return probes.ws_probe(HOST, srv.port)

    def fanout(srv: RunningServer, duration: int) -> ws.EchoResult:
        return ws.echo(srv.ws_url, mode.fanout_connections, duration, mode.ws_message_size,
                       1, "fanout", pinned=False)  # fmt: skip

    def once(srv: RunningServer) -> tuple[float, dict[str, Any], dict[str, int], str]:
        r = fanout(srv, mode.duration)
        return r.rate, r.as_dict(), r.errors, r.first_error

    try:
        with _started(ctx, names, "chat", probe, [sc], False, extra_env) as running:
            for name, srv in running.items():
                try:
                    fanout(srv, mode.warmup)
                except ws.WsClientError as exc:
                    ctx.log(f"  warm-up of {name} failed: {exc}")
            _measure(ctx, sc, running, once, redis, count_members=True)
    finally:
        if redis is not None:
            redis.stop()
    _vs_single(sc, "cdaphne-w2", "cdaphne-layer")
