"""The supervisor: binds once, runs N workers, keeps them alive.

Signals (to the supervisor; workers run in their own process group, so a
terminal's Ctrl-C reaches only the supervisor, which forwards it once):

    SIGTERM, SIGINT   every worker drains as one server does; exit 0 when all
                      have (a second signal cuts the grace period short; if
                      a worker then ends by it, waiting for executor
                      threads, the supervisor ends by that signal too)
    SIGHUP            rolling restart: one worker at a time, the new one
                      serving before the old one gets SIGTERM
    SIGTTIN, SIGTTOU  one worker more, one fewer

A worker that dies is replaced (with backoff when it dies young); one whose
event loop stops sending heartbeats for --worker-healthcheck-timeout seconds
is killed (SIGKILL) and replaced; one that reports --max-requests is
replaced like a rolling restart.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import mmap
import os
import pickle
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Any

from .. import __version__
from ..config import Bind, Config, ConfigError, configure_logging
from ..loop import reserve_stdio
from ..server import _describe, _remove_stale_socket
from . import worker as worker_mod
from .bus import Endpoint, Hub

logger = logging.getLogger("cdaphne")

SUPERVISOR_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGTTIN,
                      signal.SIGTTOU, signal.SIGCHLD)
# A worker must be serving within this many seconds of its start (or the
# healthcheck timeout, if longer): imports and lifespan startup included.
BOOT_TIMEOUT = 60.0
# A worker that dies within this many seconds of its start counts as a
# failure: the next start waits 0.5 s, 1 s, 2 s, ... up to MAX_BACKOFF.
YOUNG = 10.0
MAX_BACKOFF = 30.0
TICK = 0.1
WORKER_CMD = "from cdaphne.supervisors.worker import main; main()"
# Workers on a shared socket publish their connection counts in a shared
# memory page, one uint32 slot each (see Config.accept_balance).
SHARE_SLOTS = 1024


@dataclasses.dataclass(eq=False)
class Worker:
    """One worker process as the supervisor sees it."""

    proc: subprocess.Popen[bytes]
    ctl: socket.socket  # owned: the supervisor's end of the control socket
    started: float
    ready: bool = False
    last_beat: float = 0.0
    # The worker this one replaces (rolling restart, max-requests): it gets
    # SIGTERM once this one is ready; until then this one is not counted.
    replaces: Worker | None = None
    stopping: float | None = None  # when it got SIGTERM
    killed: str = ""  # why the supervisor sent SIGKILL
    retiring: bool = False  # asked to be replaced (max-requests)
    bus: Endpoint | None = None  # owned by the hub: the channel layer's link
    slot: int = -1  # its slot in the supervisor's share page, -1: none
    error: bytes | None = None  # why it cannot start, as it told us (worker.ERROR)

    @property
    def pid(self) -> int:
        return self.proc.pid


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by signal {-code} ({name})"
    return f"exit status {code}"


class Supervisor:
    """Runs `config.workers` cdaphne workers on sockets it binds once."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.target = config.workers or 1
        self.workers: list[Worker] = []
        self.listeners: list[socket.socket] = []
        self.listen_specs: list[tuple[Any, ...]] = []
        self.names: list[str] = []
        self.sel = selectors.DefaultSelector()
        self.hub = Hub(self._bus_want_write)
        self.signals: collections.deque[int] = collections.deque()
        self.spawn_at: list[float] = []  # scheduled starts (backoff)
        self.failures = 0
        self.boot_failed = False  # a first worker could not start: we stop
        self.next_start_ok = 0.0
        self.rolling: collections.deque[Worker] = collections.deque()
        self.rolling_active = False
        self.booted = False
        self.stopping = False
        self.exit_code = 0
        # The signal the user sent again while stopping, once a worker has
        # ended by it (the SIGTERM it was forwarded as): the supervisor
        # then ends by it too, as one server does.
        self.forced: int | None = None
        self.ended_by_force = False
        self.payload = b""
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self.share_fd = -1  # owned: memfd of the share page
        self.share: mmap.mmap | None = None

    # ---- public API ---------------------------------------------------
    def run(self) -> int:
        config = self.config
        reserve_stdio()  # Before a listening socket could take 0-2.
        if config.configure_logging:
            if config.log_fmt == Config.log_fmt:
                config.log_fmt = "%(asctime)-15s %(levelname)-8s [%(process)d] %(message)s"
            configure_logging(config)
        try:
            config.validate()
            config.check_tls()  # Each worker loads its own; fail once, here.
            self._bind()
            self.payload = self._payload()
            self._open_share()
        except ConfigError as exc:
            print(f"cdaphne: error: {exc}", file=sys.stderr)
            self._close_listeners()
            return 1
        self._install_signals()
        try:
            for _ in range(self.target):
                self._start()
            code = self._main_loop()
        finally:
            for w in self.workers:
                if w.proc.poll() is None:
                    w.proc.kill()
                    w.proc.wait()
            self._restore_signals()
            self._close_listeners()
            self._close_share()
        if code == 0 and self.forced is not None and self.ended_by_force:
            signal.signal(self.forced, signal.SIG_DFL)
            signal.raise_signal(self.forced)
        return code

    # ---- sockets ------------------------------------------------------
    def _bind(self) -> None:
        config = self.config
        for bind in config.binds():
            try:
                sock = self._bind_one(bind)
            except OSError as exc:
                raise ConfigError(_bind_error(bind, exc)) from exc
            if sock is not None:
                self.listeners.append(sock)

    def _bind_one(self, bind: Bind) -> socket.socket | None:
        backlog = self.config.backlog
        if bind.kind == "fd":
            sock = socket.socket(fileno=bind.fd)
            sock.listen(backlog)
            os.set_inheritable(bind.fd, True)
            self.listen_specs.append(("fd", bind.fd, bind.tls))
            self.names.append(_describe(bind, sock.getsockname() if sock.family != socket.AF_UNIX
                                        else (None, None)))
            sock.detach()  # Not ours to close.
            return None
        if bind.kind == "unix":
            _remove_stale_socket(bind.path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(bind.path)
            os.chmod(bind.path, bind.mode)  # As Daphne: 0666 unless -e unix:...:mode=
        else:
            family = socket.AF_INET6 if ":" in bind.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.config.reuse_port:
                # Holds the port (and resolves port 0); each worker binds
                # and listens on its own socket in the same reuseport group.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((bind.host, bind.port))
        name = sock.getsockname()
        if bind.kind == "tcp" and self.config.reuse_port:
            self.listen_specs.append(("reuseport", sock.family, name[0], name[1], bind.tls))
        else:
            sock.listen(backlog)
            sock.set_inheritable(True)
            self.listen_specs.append(("fd", sock.fileno(), bind.tls))
        self.names.append(_describe(bind, name if bind.kind == "tcp" else None))
        return sock

    def _close_listeners(self) -> None:
        for sock in self.listeners:
            sock.close()
        self.listeners = []

    def _open_share(self) -> None:
        """The page where workers sharing a socket publish their load."""
        config = self.config
        if (not config.accept_balance or config.reuse_port
                or not any(s[0] == "fd" for s in self.listen_specs)):
            return
        try:
            fd = os.memfd_create("cdaphne-accept", 0)
        except (AttributeError, OSError):
            return  # Not on this platform: the first worker awake accepts.
        try:
            os.ftruncate(fd, 4 * SHARE_SLOTS)
            self.share = mmap.mmap(fd, 4 * SHARE_SLOTS)
        except OSError:
            os.close(fd)
            return
        self.share_fd = fd

    def _close_share(self) -> None:
        if self.share is not None:
            self.share.close()
            self.share = None
        if self.share_fd >= 0:
            os.close(self.share_fd)
            self.share_fd = -1

    def _share_slot(self) -> int:
        if self.share is None:
            return -1
        used = {w.slot for w in self.workers}
        return next((i for i in range(SHARE_SLOTS) if i not in used), -1)

    def _payload(self) -> bytes:
        config = self.config
        worker_config = dataclasses.replace(
            config, host=None, port=None, unix_socket=None, fd=None, endpoints=[], listen=[],
            ssl_certfile=None, ssl_keyfile=None, ssl_keyfile_password=None, ssl_ca_certs=None,
            ssl_cert_reqs=0,
            workers=None, max_requests=None, max_requests_jitter=0, reuse_port=False,
            on_ready=None)
        try:
            data = pickle.dumps({
                "config": worker_config,
                "listen": self.listen_specs,
                "max_requests": config.max_requests,
                "max_requests_jitter": config.max_requests_jitter,
                "healthcheck_timeout": config.worker_healthcheck_timeout,
            })
        except Exception as exc:
            raise ConfigError(f"workers need settings that can be pickled: {exc}") from exc
        return struct.pack("!I", len(data)) + data

    # ---- workers ------------------------------------------------------
    def _start(self, replaces: Worker | None = None) -> Worker | None:
        parent, child = socket.socketpair()
        bus_parent, bus_child = socket.socketpair()
        fds = [child.fileno(), bus_child.fileno()]
        fds += [s[1] for s in self.listen_specs if s[0] == "fd"]
        slot = self._share_slot()
        if slot >= 0:
            fds.append(self.share_fd)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", WORKER_CMD, str(child.fileno()), str(bus_child.fileno()),
                 str(self.share_fd if slot >= 0 else -1), str(slot)],
                stdin=subprocess.DEVNULL, pass_fds=fds, process_group=0)
        except OSError as exc:
            logger.error("Cannot start a worker: %s", exc)
            parent.close()
            bus_parent.close()
            return None
        finally:
            child.close()
            bus_child.close()
        try:
            parent.sendall(self.payload)
        except OSError:
            pass  # It died already: reaped below.
        parent.setblocking(False)
        now = time.monotonic()
        w = Worker(proc, parent, started=now, last_beat=now, replaces=replaces, slot=slot)
        w.bus = self.hub.add(w.pid, bus_parent)
        self.workers.append(w)
        self.sel.register(parent, selectors.EVENT_READ, w)
        self.sel.register(bus_parent, selectors.EVENT_READ, w.bus)
        logger.debug("Started worker %d", w.pid)
        return w

    def _stop(self, w: Worker, why: str = "") -> None:
        if w.stopping is not None:
            return
        w.stopping = time.monotonic()
        if why:
            logger.info("Stopping worker %d (%s)", w.pid, why)
        self._signal(w, signal.SIGTERM)

    def _kill(self, w: Worker, why: str) -> None:
        logger.warning("Worker %d %s: killing it (SIGKILL)", w.pid, why)
        w.killed = why
        self._signal(w, signal.SIGKILL)

    @staticmethod
    def _signal(w: Worker, sig: int) -> None:
        if w.proc.returncode is None:
            try:
                w.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def _serving(self) -> list[Worker]:
        """Workers that count towards the target."""
        return [w for w in self.workers if w.stopping is None and w.replaces is None]

    def _reconcile(self) -> None:
        """Start or stop workers until the count matches the target."""
        if self.stopping:
            return
        serving = self._serving()
        n = len(serving) + len(self.spawn_at)
        while n < self.target:
            self.spawn_at.append(self.next_start_ok)
            n += 1
        while n > self.target:
            if self.spawn_at:
                self.spawn_at.pop()
            elif serving:
                self._stop(serving.pop(), "fewer workers")
            n -= 1

    # ---- the loop ----------------------------------------------------
    def _main_loop(self) -> int:
        while True:
            timeout = TICK
            for key, events in self.sel.select(timeout):
                if key.data is None:
                    self._drain_wakeup()
                elif isinstance(key.data, Endpoint):
                    self._on_bus(key.data, events)
                else:
                    self._on_ctl(key.data)
            while self.signals:
                self._on_signal(self.signals.popleft())
            self._reap()
            if self.stopping:
                if not self.workers:
                    logger.log(logging.DEBUG if self.boot_failed else logging.INFO,
                               "All workers stopped")
                    return self.exit_code
                self._check_stopping()
                continue
            self._check_health()
            self._start_due()

    def _on_ctl(self, w: Worker) -> None:
        try:
            data = w.ctl.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(w.ctl)
            return
        self._ctl_data(w, data)

    def _drain_ctl(self, w: Worker) -> None:
        """A worker that exited before it served may have said why after
        our last read: its last bytes are read before its exit is judged."""
        while not w.ready:
            try:
                data = w.ctl.recv(4096)
            except OSError:
                return
            if not data:
                return
            self._ctl_data(w, data)

    def _ctl_data(self, w: Worker, data: bytes) -> None:
        if w.error is not None or (not w.ready and data.startswith(worker_mod.ERROR)):
            # Its message runs to EOF (nothing else comes before R).
            w.error = (w.error or b"") + (data if w.error is not None else data[1:])
            return
        now = time.monotonic()
        w.last_beat = now
        if worker_mod.READY in data and not w.ready:
            w.ready = True
            self._on_ready(w)
        if worker_mod.RETIRE in data and not w.retiring and w.stopping is None:
            self._on_retire(w)

    def _on_bus(self, end: Endpoint, events: int) -> None:
        if events & selectors.EVENT_WRITE:
            self.hub.on_writable(end)
        if events & selectors.EVENT_READ and not self.hub.on_readable(end):
            self.sel.unregister(end.sock)  # The worker is exiting.

    def _bus_want_write(self, end: Endpoint, want: bool) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
        try:
            self.sel.modify(end.sock, events, end)
        except KeyError:
            pass  # Unregistered at EOF: nothing more goes to it.

    def _on_ready(self, w: Worker) -> None:
        logger.debug("Worker %d serving", w.pid)
        old = w.replaces
        if old is not None:
            w.replaces = None
            if self.stopping:
                return
            self._stop(old, f"replaced by worker {w.pid}")
            self._roll()
            return
        if not self.booted and len([x for x in self.workers if x.ready]) >= self.target:
            self.booted = True
            pids = ", ".join(str(x.pid) for x in self.workers)
            logger.info("cdaphne %s supervisor %d serving with %d workers [%s] (Python %s)",
                        __version__, os.getpid(), len(self.workers), pids,
                        sys.version.split()[0])
            for name in self.names:
                logger.info("Listening on %s", name)
        elif self.booted:
            logger.info("Worker %d serving", w.pid)

    def _on_retire(self, w: Worker) -> None:
        if time.monotonic() < self.next_start_ok or self.stopping:
            return  # Asked again on its next heartbeat.
        w.retiring = True
        logger.info("Worker %d reached --max-requests: replacing it", w.pid)
        if self._start(replaces=w) is None:
            w.retiring = False

    def _roll(self) -> None:
        """Replace the next worker of a rolling restart, if none is in flight."""
        if not self.rolling_active or any(x.replaces is not None for x in self.workers):
            return
        while self.rolling:
            old = self.rolling.popleft()
            if old in self.workers and old.stopping is None:
                if self._start(replaces=old) is None:
                    self.rolling.clear()
                    self.rolling_active = False
                return
        self.rolling_active = False
        logger.info("Rolling restart done: workers [%s]",
                    ", ".join(str(w.pid) for w in self._serving()))

    def _reap(self) -> None:
        for w in list(self.workers):
            code = w.proc.poll()
            if code is None:
                continue
            self.workers.remove(w)
            for sock in (w.ctl, w.bus.sock) if w.bus else (w.ctl,):
                try:
                    self.sel.unregister(sock)
                except (KeyError, ValueError):
                    pass
            self._drain_ctl(w)
            w.ctl.close()
            self.hub.remove(w.pid)
            if self.share is not None and w.slot >= 0:
                struct.pack_into("=I", self.share, 4 * w.slot, 0)  # It accepts no more.
            self._on_exit(w, code)

    def _on_exit(self, w: Worker, code: int) -> None:
        now = time.monotonic()
        if w.stopping is not None:
            level = logging.INFO if code == 0 else logging.WARNING
            if self.boot_failed:
                level = logging.DEBUG  # The others, stopped mid-boot: noise.
            logger.log(level, "Worker %d stopped (%s)", w.pid, describe_exit(code))
            if self.forced is not None and code == -signal.SIGTERM:
                self.ended_by_force = True
            elif self.stopping and code != 0 and self.exit_code == 0:
                self.exit_code = 1
            return
        for x in self.workers:
            if x.replaces is w:
                x.replaces = None  # Its replacement takes its place.
        if not self.booted and w.replaces is None and not w.ready:
            # A worker that cannot boot (import error, lifespan failure...):
            # stop, as one server would.  Its reason (worker.ERROR) is said
            # here once, not by each worker; a lifespan failure the worker
            # logged itself.
            if w.error is not None:
                print(f"cdaphne: error: a worker failed to boot: "
                      f"{w.error.decode('utf-8', 'replace')}", file=sys.stderr, flush=True)
            else:
                logger.error("Worker %d failed to boot: %s; stopping", w.pid,
                             describe_exit(code))
            self.boot_failed = True
            self.exit_code = code if code > 0 else 1
            self._shutdown()
            return
        if now - w.started < YOUNG or not w.ready:
            self.failures += 1
            delay = min(0.5 * 2 ** (self.failures - 1), MAX_BACKOFF)
        else:
            self.failures = 0
            delay = 0.0
        self.next_start_ok = now + delay
        what = "failed to boot" if not w.ready else "died"
        why = f" after it {w.killed}" if w.killed else ""
        how = w.error.decode("utf-8", "replace") if w.error is not None else describe_exit(code)
        if w.replaces is not None:
            logger.error("Worker %d %s: %s%s; keeping worker %d", w.pid, what, how, why,
                         w.replaces.pid)
            w.replaces.retiring = False  # --max-requests: asks again
            self.rolling.clear()
            self.rolling_active = False
            return
        logger.error("Worker %d %s: %s%s; starting another in %.1f s",
                     w.pid, what, how, why, delay)
        self._reconcile()

    def _start_due(self) -> None:
        now = time.monotonic()
        due = [t for t in self.spawn_at if t <= now]
        for t in due:
            self.spawn_at.remove(t)
            if self._start() is None:
                self.failures += 1
                self.next_start_ok = now + min(0.5 * 2 ** (self.failures - 1), MAX_BACKOFF)
                self.spawn_at.append(self.next_start_ok)

    def _check_health(self) -> None:
        now = time.monotonic()
        timeout = self.config.worker_healthcheck_timeout
        boot = max(BOOT_TIMEOUT, timeout)
        for w in self.workers:
            if w.killed or w.proc.returncode is not None:
                continue
            if w.ready and now - w.last_beat > timeout:
                self._kill(w, f"sent no heartbeat for {now - w.last_beat:.1f} s")
            elif not w.ready and now - w.started > boot:
                self._kill(w, f"was not serving {boot:.0f} s after its start")

    def _check_stopping(self) -> None:
        # Workers drain for graceful_timeout, then give apps
        # application_close_timeout twice over (disconnect, then cancel),
        # then the lifespan shutdown its timeout (and 1 s once cancelled).
        config = self.config
        limit = (config.graceful_timeout + 2 * config.application_close_timeout
                 + config.lifespan_shutdown_timeout + 6)
        now = time.monotonic()
        for w in self.workers:
            if not w.killed and w.stopping is not None and now - w.stopping > limit:
                self._kill(w, f"still draining after {limit:.0f} s")
                self.exit_code = 1

    # ---- signals ------------------------------------------------------
    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for sig in SUPERVISOR_SIGNALS:
            signal.signal(sig, self._handler)

    def _restore_signals(self) -> None:
        for sig in SUPERVISOR_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        for s in (self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        self.sel.close()

    def _handler(self, sig: int, frame: Any) -> None:
        if sig != signal.SIGCHLD:
            self.signals.append(sig)

    def _drain_wakeup(self) -> None:
        assert self._wake_r is not None
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _on_signal(self, sig: int) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            if self.stopping:
                # Again: workers cut their grace period short (one waiting
                # for executor threads ends by the signal).
                self.forced = sig
                for w in self.workers:
                    self._signal(w, signal.SIGTERM)
                return
            logger.info("Shutting down: stopping workers [%s]",
                        ", ".join(str(w.pid) for w in self.workers))
            self._shutdown()
        elif self.stopping:
            return
        elif sig == signal.SIGHUP:
            logger.info("Rolling restart of workers [%s]",
                        ", ".join(str(w.pid) for w in self._serving()))
            self.rolling = collections.deque(self._serving())
            self.rolling_active = True
            self._roll()
        elif sig == signal.SIGTTIN:
            self.target += 1
            logger.info("SIGTTIN: %d workers", self.target)
            self._reconcile()
        elif sig == signal.SIGTTOU:
            if self.target <= 1:
                logger.info("SIGTTOU: keeping the last worker")
                return
            self.target -= 1
            logger.info("SIGTTOU: %d workers", self.target)
            self._reconcile()

    def _shutdown(self) -> None:
        self.stopping = True
        self.spawn_at.clear()
        self.rolling.clear()
        self.rolling_active = False
        for w in self.workers:
            self._stop(w)


def _bind_error(bind: Bind, exc: OSError) -> str:
    if bind.kind == "tcp":
        return (f"[Errno {exc.errno}] error while attempting to bind on address "
                f"({bind.host!r}, {bind.port}): {exc.strerror}")
    if bind.kind == "unix":
        return f"bind {bind.path}: {exc.strerror}"
    return f"fd {bind.fd}: {exc.strerror}"
