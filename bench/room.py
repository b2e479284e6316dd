"""The room-100 and room-1000 scenarios: a chat room on cdaphne.pubsub
(cdaphne-pubsub: PubSubMixin, the server writes each message to every member in C)
against the Channels tutorial consumer with group_send (cdaphne, uvicorn, Granian,
Daphne; Channels' InMemoryChannelLayer).

The members are spread over `room_client_procs` picows processes on the client core;
each process has one sender in a closed loop with WINDOW messages in flight (the
next once all of its own members got one), so the room carries procs x WINDOW
broadcasts at a time.
Deliveries per second count every message every member received in the window;
the p99 latency is over a sample of deliveries (send time to receipt, one clock).
Whether the client was the limit shows in `CPU % srv/cli` (the client processes
share one core: near 100% there means the client, not the server, was the limit).
"""

import select
import subprocess
import time

from . import env, probes, ws
from .cpu import Meter
from .results import ERROR, ScenarioResult
from .scenarios import Context, _cpu_medians, _died, _rotated, _started
from .servers import CLIENT_CORE, HOST, RunningServer, pin

WINDOW = 4  # broadcasts each client process keeps in flight


def _run_clients(url: str, members: int, procs: int, duration: int, size: int) -> dict:
    share = [members // procs + (1 if i < members % procs else 0) for i in range(procs)]
    start_at = time.time() + 600.0  # replaced once every process has joined
    children = []
    for i, n in enumerate(share):
        cmd = [
            *pin(CLIENT_CORE), str(env.peer_python()), str(ws.CLIENT), "room",
            "--url", url, "--connections", str(n), "--duration", str(duration),
            "--size", str(size), "--first-id", str(i), "--start-at", f"{start_at:.3f}",
            "--window", str(WINDOW),
        ]  # fmt: skip
        children.append(
            subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        )
    # Each process prints WSREADY once its members joined; then all start together.
    for child in children:
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], 120)
        line = child.stdout.readline() if ready else b"(no answer in 120 s)"
        if line.strip() != b"WSREADY":
            for c in children:
                c.kill()
            err = child.stderr.read().decode() if child.stderr else ""
            raise ws.WsClientError(f"room client did not join: {line!r} {err[-600:]}")
    go = f"{time.time() + 0.3:.6f}\n".encode()
    for child in children:
        assert child.stdin is not None
        child.stdin.write(go)
        child.stdin.flush()
    outs = []
    for child in children:
        try:
            out, err = child.communicate(timeout=duration + 30)
        except subprocess.TimeoutExpired:
            child.kill()
            out, err = child.communicate()
        outs.append(ws._parse(out.decode(), err.decode(), child.returncode))
    lat = sorted(x for o in outs for x in o["latencies_ms"])

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else 0.0

    deliveries = sum(int(o["messages"]) for o in outs)
    return {
        "deliveries_per_s": deliveries / duration,
        "deliveries": deliveries,
        "broadcasts": sum(int(o["broadcasts"]) for o in outs),
        "connected": sum(int(o["connected"]) for o in outs),
        "joined_late": sum(int(o["joined_late"]) for o in outs),
        "errors": {
            "connect": sum(int(o["connect_failures"]) for o in outs),
            "mismatch": sum(int(o["mismatches"]) for o in outs),
        },
        "first_error": next((str(o["first_error"]) for o in outs if o["first_error"]), ""),
        "latency_ms": {
            "p50": pct(0.5),
            "p90": pct(0.9),
            "p99": pct(0.99),
            "max": pct(1.0),
            "samples": len(lat),
        },
        "client_cpu_pct": round(100.0 * sum(float(o["client_cpu_s"]) for o in outs) / duration, 1),
    }


def room(ctx: Context, sc: ScenarioResult, names: list[str], members: int) -> None:
    mode = ctx.mode

    def probe(srv: RunningServer) -> str | None:
        return probes.ws_probe(HOST, srv.port)

    def once(srv: RunningServer, duration: int) -> dict:
        return _run_clients(srv.ws_url, members, mode.room_client_procs, duration,
                            mode.ws_message_size)  # fmt: skip

    with _started(ctx, names, "chat", probe, [sc]) as running:
        eligible = list(running)
        ctx.log(f"  {sc.key}: {mode.reps} runs x {mode.duration} s, order rotates: {eligible}")
        for rep in range(mode.reps):
            for name in _rotated(eligible, rep):
                srv, res = running[name], sc.server(name)
                if _died(srv, res):
                    continue
                meter = Meter(srv.proc.pid)
                try:
                    r = once(srv, mode.duration)
                except ws.WsClientError as exc:
                    res.fail(ERROR, str(exc))
                    continue
                cpu = meter.stop()
                if r["connected"] < members:
                    res.add_errors({"connect": members - r["connected"]})
                res.values.append(r["deliveries_per_s"])
                res.runs.append({**r, "cpu": cpu})
                res.add_errors(r["errors"])
                lat = r["latency_ms"]
                ctx.log(
                    f"    {name:15s} {r['deliveries_per_s']:12,.0f} deliveries/s"
                    f"  p99 {lat['p99']:.1f} ms (p50 {lat['p50']:.1f})"
                    f"  members {r['connected']}  server cpu {cpu['server_cpu_pct']:.0f}%"
                    f"  client cpu {r['client_cpu_pct']:.0f}%"
                )
                _died(srv, res)
        for name in eligible:
            res = sc.server(name)
            _cpu_medians(res)
            p99s = sorted(float(r["latency_ms"]["p99"]) for r in res.runs)
            if p99s:
                res.extra["p99_ms"] = p99s[len(p99s) // 2]
                res.extra["summary"] = f"p99 latency {res.extra['p99_ms']:.1f} ms"
