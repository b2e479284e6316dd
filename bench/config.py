"""Modes, scenario names and the load parameters each mode uses."""

from dataclasses import dataclass, replace

SCENARIOS = (
    "hello", "pipeline", "django", "ws", "fanout", "ws-idle", "latency", "layer",
    "hello-w2", "chat-w2", "hello-tls", "aio-micro", "ws-idle-channels", "room-100", "room-1000",
)  # fmt: skip
SCENARIO_TITLES = {
    "hello": "HTTP hello world, keep-alive",
    "pipeline": "HTTP hello world, pipelined 16 deep",
    "django": "Django view (get_asgi_application)",
    "ws": "WebSocket echo",
    "fanout": "Channels chat room fan-out (InMemoryChannelLayer)",
    "ws-idle": "Idle WebSocket memory",
    "ws-idle-channels": "Idle Channels room member memory (AsyncWebsocketConsumer, group_add)",
    "latency": "HTTP latency at a fixed rate",
    "layer": "Channel layer (bench/layer_bench.py)",
    "hello-w2": "HTTP hello world, --workers 2 (unpinned, shares the cores with wrk)",
    "chat-w2": "Channels chat room, --workers 2, members on both workers (unpinned)",
    "hello-tls": "HTTPS hello world (TLS 1.3), keep-alive",
    "aio-micro": "asyncio micro-benchmark: the event loop's own costs",
    "room-100": "Chat room of 100 members: cdaphne.pubsub vs the tutorial consumer + group_send",
    "room-1000": "Chat room of 1,000 members: cdaphne.pubsub vs the tutorial consumer + group_send",
}
ALL_SERVERS = (
    "cdaphne", "cdaphne-layer", "uvicorn", "granian", "hypercorn", "daphne", "fastpysgi", "ceiling",
    "cdaphne-w2", "cdaphne-w2-redis", "uvicorn-w2", "granian-w2",
    "cdaphne-tls", "uvicorn-tls", "granian-tls", "cdaphne-pubsub", "cdaphne-no-batch",
)  # fmt: skip


@dataclass(frozen=True)
class Mode:
    """How long and how often each measurement runs."""

    name: str
    reps: int  # runs per server; the median is reported
    duration: int  # seconds per wrk or WebSocket run
    warmup: int  # seconds of unrecorded load before the first run
    connections: int = 50
    pipeline_depth: int = 16
    ws_connections: int = 50
    ws_message_size: int = 64
    ws_client_procs: int = 1
    fanout_connections: int = 100
    room_client_procs: int = 4  # the room-* scenarios: client processes, one sender each
    idle_connections: int = 1000
    latency_rate: int = 1000  # requests per second, all connections together
    latency_connections: int = 10
    startup_timeout: float = 30.0


# Budgets: quick under 3 minutes, full under 15 (with the channel-layer benchmark).
QUICK = Mode(name="quick", reps=3, duration=1, warmup=1, idle_connections=500)
FULL = Mode(name="full", reps=5, duration=2, warmup=2, idle_connections=5000)


def with_overrides(mode: Mode, reps: int | None, duration: int | None) -> Mode:
    """Mode with --reps/--duration applied (the smoke test runs one 1-second run)."""
    if reps is not None:
        mode = replace(mode, reps=max(1, reps))
    if duration is not None:
        mode = replace(mode, duration=max(1, duration), warmup=min(mode.warmup, duration))
    return mode
