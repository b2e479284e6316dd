"""The servers under test: how to start each one on a port, pinned to core 0, and stop it."""

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import env

# Import strings of the apps in bench/apps, which is the servers' cwd and PYTHONPATH.
TARGETS = {
    "hello": "hello:app",
    "echo": "echo:app",
    "django": "djhello.asgi:application",
    "chat": "chatroom.asgi:application",
}
HOST = "127.0.0.1"
SERVER_CORE = "0"
CLIENT_CORE = "1"
WORKERS = 2  # the *-w2 servers


class Unavailable(RuntimeError):
    """The server could not be started or did not answer correctly."""


Argv = Callable[[str, int], list[str]]


@dataclass(frozen=True)
class ServerSpec:
    """One server: where it runs from, which apps it can serve, its command line."""

    name: str
    venv: str  # "project" (.venv), "peer" (bench/.work/venv) or "none" (C binary)
    apps: frozenset[str]
    argv: Argv
    description: str
    env: tuple[tuple[str, str], ...] = ()  # extra environment variables
    tls: bool = False  # serves https (bench/.work/tls's self-signed certificate)

    def python(self) -> Path:
        return env.project_python() if self.venv == "project" else env.peer_python()


def _peer_bin(name: str) -> str:
    return str(env.PEER_VENV / "bin" / name)


# Access logs are off for every server, as uvicorn's own benchmarks run it
# (--no-access-log): cdaphne and uvicorn log by default, Daphne at -v 1, and
# Granian, Hypercorn and FastPySGI only when asked.
def _cdaphne(target: str, port: int) -> list[str]:
    return [
        str(env.project_python()), "-m", "cdaphne", "-b", HOST, "-p", str(port),
        "--no-access-log", target,
    ]  # fmt: skip


def _cdaphne_no_batch(target: str, port: int) -> list[str]:
    return [*_cdaphne(target, port)[:-1], "--sched-batch", "false", target]


def _cdaphne_w2(target: str, port: int) -> list[str]:
    return [*_cdaphne(target, port)[:-1], "--workers", str(WORKERS), target]


def _uvicorn(target: str, port: int) -> list[str]:
    return [
        _peer_bin("uvicorn"), target, "--host", HOST, "--port", str(port),
        "--http", "httptools", "--loop", "uvloop", "--ws", "websockets",
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


def _uvicorn_w2(target: str, port: int) -> list[str]:
    return [*_uvicorn(target, port), "--workers", str(WORKERS)]


def _granian(target: str, port: int, workers: int = 1) -> list[str]:
    return [
        _peer_bin("granian"), "--interface", "asgi", "--host", HOST, "--port", str(port),
        "--workers", str(workers), "--log-level", "warning", target,
    ]  # fmt: skip


def _granian_w2(target: str, port: int) -> list[str]:
    return _granian(target, port, WORKERS)


def _hypercorn(target: str, port: int) -> list[str]:
    return [
        _peer_bin("hypercorn"), "-b", f"{HOST}:{port}", "-w", "1", "-k", "uvloop",
        "--log-level", "warning", target,
    ]  # fmt: skip


def _daphne(target: str, port: int) -> list[str]:
    return [_peer_bin("daphne"), "-b", HOST, "-p", str(port), "-v", "0", target]


def _fastpysgi(target: str, port: int) -> list[str]:
    return [_peer_bin("fastpysgi"), "--host", HOST, "-p", str(port), target]


# hello-tls: the same servers with TLS on (TLS 1.3 is what each negotiates
# with wrk; the certificate is env.tls_cert()'s P-256 one).
def _cdaphne_tls(target: str, port: int) -> list[str]:
    cert, key = env.tls_cert()
    return [*_cdaphne(target, port)[:-1], "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
            target]  # fmt: skip


def _uvicorn_tls(target: str, port: int) -> list[str]:
    cert, key = env.tls_cert()
    return [*_uvicorn(target, port), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]


def _granian_tls(target: str, port: int) -> list[str]:
    cert, key = env.tls_cert()
    return [*_granian(target, port)[:-1], "--ssl-certificate", str(cert), "--ssl-keyfile",
            str(key), target]  # fmt: skip


def _ceiling(target: str, port: int) -> list[str]:
    return [str(env.CEILING_BIN), str(port)]


ALL_APPS = frozenset(TARGETS)
W2_APPS = frozenset({"hello", "chat"})
C_LAYER = ("BENCH_CHANNEL_LAYER", "cdaphne.layers.InMemoryChannelLayer")
REDIS_LAYER = ("BENCH_CHANNEL_LAYER", "channels_redis.core.RedisChannelLayer")
SPECS: dict[str, ServerSpec] = {
    s.name: s
    for s in [
        ServerSpec("cdaphne", "project", ALL_APPS, _cdaphne, "cdaphne (this project), 1 process"),
        ServerSpec(
            "cdaphne-layer",
            "project",
            frozenset({"chat"}),
            _cdaphne,
            "cdaphne with its own C channel layer (cdaphne.layers.InMemoryChannelLayer)",
            env=(("BENCH_CHANNEL_LAYER", "cdaphne.layers.InMemoryChannelLayer"),),
        ),
        ServerSpec(
            "cdaphne-no-batch",
            "project",
            frozenset({"django", "chat"}),
            _cdaphne_no_batch,
            "cdaphne --sched-batch false: its threads under the default scheduling policy",
        ),
        ServerSpec(
            "cdaphne-pubsub",
            "project",
            frozenset({"chat"}),
            _cdaphne,
            "cdaphne, the chat room on cdaphne.pubsub (cdaphne.channels.PubSubMixin)",
            env=(("BENCH_CHAT_PUBSUB", "1"),),
        ),
        ServerSpec(
            "uvicorn",
            "peer",
            ALL_APPS,
            _uvicorn,
            "uvicorn --http httptools --loop uvloop --ws websockets, 1 worker",
        ),
        ServerSpec("granian", "peer", ALL_APPS, _granian, "granian --interface asgi, 1 worker"),
        ServerSpec("hypercorn", "peer", ALL_APPS, _hypercorn, "hypercorn -k uvloop, 1 worker"),
        ServerSpec("daphne", "peer", ALL_APPS, _daphne, "daphne (Twisted), 1 process"),
        ServerSpec(
            "fastpysgi",
            "peer",
            frozenset({"hello", "django"}),
            _fastpysgi,
            "fastpysgi (C, libuv, llhttp), 1 process, no WebSocket",
        ),
        ServerSpec(
            "ceiling",
            "none",
            frozenset({"hello"}),
            _ceiling,
            "bench/ceiling.c: bare libuv, constant response, no Python",
        ),
        ServerSpec(
            "cdaphne-tls",
            "project",
            frozenset({"hello"}),
            _cdaphne_tls,
            "cdaphne --ssl-certfile/--ssl-keyfile (OpenSSL)",
            tls=True,
        ),
        ServerSpec(
            "uvicorn-tls",
            "peer",
            frozenset({"hello"}),
            _uvicorn_tls,
            "uvicorn (httptools, uvloop) --ssl-certfile/--ssl-keyfile (Python's ssl)",
            tls=True,
        ),
        ServerSpec(
            "granian-tls",
            "peer",
            frozenset({"hello"}),
            _granian_tls,
            "granian --interface asgi --ssl-certificate/--ssl-keyfile",
            tls=True,
        ),
        # --workers 2 (the hello-w2 and chat-w2 scenarios). For the chat room each one
        # needs a layer that spans the workers: cdaphne's C layer (relayed by the
        # supervisor) or channels_redis on the scenario's redis-server.
        ServerSpec(
            "cdaphne-w2",
            "project",
            W2_APPS,
            _cdaphne_w2,
            f"cdaphne --workers {WORKERS} (shared listening socket); chat: its C layer"
            " (cdaphne.layers.InMemoryChannelLayer, relayed by the supervisor)",
            env=(C_LAYER,),
        ),
        ServerSpec(
            "cdaphne-w2-redis",
            "project",
            frozenset({"chat"}),
            _cdaphne_w2,
            f"cdaphne --workers {WORKERS}; chat: channels_redis RedisChannelLayer",
            env=(REDIS_LAYER,),
        ),
        ServerSpec(
            "uvicorn-w2",
            "peer",
            W2_APPS,
            _uvicorn_w2,
            f"uvicorn --http httptools --loop uvloop --ws websockets --workers {WORKERS};"
            " chat: channels_redis RedisChannelLayer",
            env=(REDIS_LAYER,),
        ),
        ServerSpec(
            "granian-w2",
            "peer",
            W2_APPS,
            _granian_w2,
            f"granian --interface asgi --workers {WORKERS}; chat: channels_redis RedisChannelLayer",
            env=(REDIS_LAYER,),
        ),
    ]
}


def pin(core: str) -> list[str]:
    """taskset prefix for one core, or nothing on a one-core machine."""
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        return []
    return ["taskset", "-c", core]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _tail(path: Path, limit: int = 1500) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-limit:].strip()


class RunningServer:
    """A server process group started by the runner; stop() ends exactly that group."""

    def __init__(
        self,
        spec: ServerSpec,
        app: str,
        log_dir: Path,
        pinned: bool = True,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.spec = spec
        self.app = app
        self.port = free_port()
        self.log_path = log_dir / f"{spec.name}-{app}.log"
        cores = pin(SERVER_CORE) if pinned else []
        self.argv = [*cores, *spec.argv(TARGETS[app], self.port)]
        pythonpath = [str(env.APPS)]
        if spec.venv == "project":
            pythonpath.append(str(env.ROOT / "python"))  # in case it is built but not installed
        child_env = dict(os.environ, PYTHONPATH=os.pathsep.join(pythonpath), **dict(spec.env))
        child_env.update(extra_env or {})
        child_env.pop("DJANGO_SETTINGS_MODULE", None)
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=env.APPS,
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def url(self) -> str:
        return f"{'https' if self.spec.tls else 'http'}://{HOST}:{self.port}/"

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}/"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self) -> str:
        return _tail(self.log_path)

    def wait_listening(self, timeout: float) -> None:
        """Return once the port accepts connections; raise Unavailable on exit or timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise Unavailable(
                    f"exited with code {self.proc.returncode} before listening: {self.log_tail()}"
                )
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise Unavailable(f"not listening after {timeout:.0f} s: {self.log_tail()}")

    def _signal(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        stop_all([self])


def stop_all(running: list[RunningServer], grace: float = 3.0) -> None:
    """SIGINT to every group at once, then SIGTERM, then SIGKILL to those still there.

    Only the process groups these objects started are signalled. Workers (granian,
    hypercorn) may outlive their parent, so each group gets a final SIGKILL.
    """
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        alive = [srv for srv in running if srv.alive()]
        if not alive:
            break
        for srv in alive:
            srv._signal(sig)
        deadline = time.monotonic() + grace
        for srv in alive:
            try:
                srv.proc.wait(timeout=max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    for srv in running:
        srv._signal(signal.SIGKILL)


def start(
    spec: ServerSpec,
    app: str,
    log_dir: Path,
    timeout: float,
    pinned: bool = True,
    extra_env: dict[str, str] | None = None,
) -> RunningServer:
    """Start a server and wait for its port; the caller probes the response."""
    if app not in spec.apps:
        raise Unavailable(f"{spec.name} cannot serve the {app} app")
    if spec.venv != "none" and not spec.python().exists():
        raise Unavailable(f"{spec.python()} does not exist")
    server = RunningServer(spec, app, log_dir, pinned, extra_env)
    try:
        server.wait_listening(timeout)
    except Unavailable:
        server.stop()
        raise
    return server
