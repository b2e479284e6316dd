"""Startup, the main loop, graceful shutdown and signals."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import stat
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import __version__
from . import pubsub as _pubsub
from ._cdaphne import Server as CoreServer
from .accesslog import AccessLogGenerator
from .config import Bind, Config, ConfigError, configure_logging, is_decimal
from .lifespan import Lifespan
from .loop import LibuvEventLoop, new_event_loop

logger = logging.getLogger("cdaphne")

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Seconds a connection accepted just before a graceful stop has to send
# its first request (it is served, then closed).
FRESH_GRACE = 1.0


class StartupError(Exception):
    """Serving could not begin; the message is one line for the user."""


class Server:
    """Serves one ASGI application on cdaphne's C core."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.ports: list[int] = []
        self.sockets: list[Any] = []
        self.core: CoreServer | None = None
        self.loop: LibuvEventLoop | None = None
        self.started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._stop_requested = False
        self._signals: asyncio.AbstractEventLoop | None = None  # handlers on it
        self._exiting = False  # the wait for executor threads was announced

    # ---- public API ---------------------------------------------------
    def run(self) -> int:
        """Serve until SIGINT/SIGTERM or request_stop(); returns the exit code."""
        if self.config.configure_logging:
            configure_logging(self.config)
        loop = new_event_loop()
        if self.config.sched_batch:
            loop.core.sched_batch_during_hops()
        asyncio.set_event_loop(loop)
        # Ours until the loop closes: a signal while the executor's threads
        # are waited for met the default action before (SIGTERM killed,
        # SIGINT raised KeyboardInterrupt with a traceback).
        self._install_signal_handlers(loop)
        try:
            return loop.run_until_complete(self.serve())
        except (ConfigError, StartupError) as exc:
            self._report_error(str(exc))
            return 1
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(self._wait_executor(loop))
            finally:
                self._remove_signal_handlers(loop)
                asyncio.set_event_loop(None)
                loop.close()

    async def _wait_executor(self, loop: asyncio.AbstractEventLoop) -> None:
        """The default executor's threads, waited for; a signal once the
        wait is announced ends the process by that signal (_on_signal).
        Not before: a worker whose boot failed meets the supervisor's stop
        here, with no thread to wait for, and said "Exiting now"."""
        wait = asyncio.ensure_future(loop.shutdown_default_executor())
        done, _ = await asyncio.wait({wait}, timeout=0.5)
        if not done:
            logger.info("Waiting for executor threads to finish "
                        "(a second SIGINT or SIGTERM exits now)")
            self._exiting = True
        await wait

    def _report_error(self, message: str) -> None:
        """Why the server could not start: one line on stderr."""
        print(f"cdaphne: error: {message}", file=sys.stderr)

    def _report_startup_failure(self, text: str, exc: BaseException | None) -> None:
        """The app's lifespan startup failed: logged, with what it raised."""
        if exc is not None:
            logger.error("Exception in 'lifespan' protocol", exc_info=exc)
        logger.error("%s", text)

    def request_stop(self) -> None:
        """Ask the server to stop; safe from any thread and from signal handlers."""
        self._stop_requested = True
        loop = self.loop
        if loop is not None and not loop.is_closed() and self._stop is not None:
            loop.call_soon_threadsafe(self._stop.set)

    async def serve(self) -> int:
        config = self.config
        app = config.load()
        loop = asyncio.get_running_loop()
        if not isinstance(loop, LibuvEventLoop):
            raise StartupError("cdaphne.Server must run on cdaphne.loop.LibuvEventLoop")
        self.loop = loop
        _configure_loop(loop, config)
        self._stop = asyncio.Event()
        if self._stop_requested:
            self._stop.set()
        binds = config.binds()
        # Every TLS context is loaded before the app starts: a bad key or
        # certificate stops the server here (ConfigError, one line).
        tls = [b.tls.context() if b.tls is not None else None for b in binds]

        # Opened before the app starts: a path that cannot be written is
        # one line, with no lifespan left running.
        access_log = None
        if config.access_log and config.action_logger is None:
            try:
                access_log = AccessLogGenerator.open(config.access_log, loop)
            except OSError as exc:
                raise StartupError(f"access log {config.access_log}: {exc.strerror}") from exc
            config.action_logger = access_log

        # Signals are ours from before the app's startup: SIGINT or SIGTERM
        # while it runs abandons it (they were lost, or killed us, before).
        installed = self._install_signal_handlers(loop)
        try:
            return await self._serve(config, app, binds, tls, access_log)
        finally:
            if installed:
                self._remove_signal_handlers(loop)

    async def _serve(self, config: Config, app: Any, binds: list[Bind], tls: list[Any],
                     access_log: AccessLogGenerator | None) -> int:
        assert self._stop is not None and self.loop is not None
        loop = self.loop
        lifespan = Lifespan(app, config.lifespan, config.lifespan_shutdown_timeout,
                            on_exit=self._stop.set)
        started = await self._start(lifespan)
        if lifespan.exit_code is not None:
            return lifespan.exit_code  # The app raised SystemExit: logged.
        if started is None:
            logger.info("Stopped during application startup")
            return 0
        if not started:
            self._report_startup_failure(lifespan.startup_failure_text(), lifespan.startup_error)
            return 3
        try:
            links = await _pubsub.start_links(config)
        except Exception as exc:
            await lifespan.shutdown()
            raise StartupError(f"cdaphne.pubsub: {exc}") from exc
        core = CoreServer(loop.core, app, config)
        self.core = core
        # uvicorn's scope["state"]: a shallow copy per request of the
        # lifespan's dict, an empty one when lifespan is off or refused.
        core.set_state(lifespan.state)
        try:
            for bind, ctx in zip(binds, tls, strict=True):
                self._listen(core, bind, ctx)
        except OSError as exc:
            core.close_listeners()
            await _pubsub.stop_links(links)
            await lifespan.shutdown()
            raise StartupError(str(exc)) from exc

        self._announce(binds)
        self.started.set()
        if config.on_ready is not None:
            config.on_ready(self)

        await self._stop.wait()
        await self._shutdown(core, lifespan.task)
        await _pubsub.stop_links(links)
        await lifespan.shutdown()
        if access_log is not None:
            access_log.close()
        return lifespan.exit_code if lifespan.exit_code is not None else 0

    # ---- internals ----------------------------------------------------
    async def _start(self, lifespan: Lifespan) -> bool | None:
        """The app's lifespan startup, or None when a stop came first (its
        task is cancelled: the app's cleanup runs)."""
        assert self._stop is not None
        startup = asyncio.ensure_future(lifespan.startup())
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait((startup, stop), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if startup.done():
            return startup.result()
        startup.cancel()
        task = lifespan.task
        if task is not None:
            task.cancel()
        await asyncio.wait([t for t in (startup, task) if t is not None],
                           timeout=self.config.application_close_timeout)
        return None

    def _announce(self, binds: list[Bind]) -> None:
        """The startup lines, Daphne's (a worker's supervisor logs its own)."""
        logger.info("Starting server at %s", ", ".join(sorted(b.describe() for b in binds)))
        logger.info("cdaphne %s (Python %s)", __version__, sys.version.split()[0])
        logger.info("HTTP/2 support not enabled (cdaphne serves HTTP/1.1 and WebSocket)")
        for bind, name in zip(binds, self.sockets, strict=True):
            logger.info("Configuring endpoint %s", bind.describe())
            logger.info("Listening on %s", _describe(bind, name))

    def _listen(self, core: CoreServer, bind: Bind, tls: Any = None) -> None:
        backlog = self.config.backlog
        name: tuple[str, int | None]
        if bind.kind == "tcp":
            name = core.listen_tcp(bind.host, bind.port, backlog, tls)
            self.ports.append(name[1])
        elif bind.kind == "unix":
            _remove_stale_socket(bind.path)
            directory = os.path.dirname(bind.path) or "."
            if not os.path.isdir(directory):
                # libuv reports ENOENT from bind() as EACCES ("permission denied").
                raise OSError(f"bind {bind.path}: No such file or directory")
            core.listen_unix(bind.path, backlog, tls)
            # Daphne's (Twisted's) socket is 0666 whatever the umask: a proxy
            # running as another user can connect.
            os.chmod(bind.path, bind.mode)
            name = (bind.path, None)
        else:
            try:
                sock = socket.socket(fileno=bind.fd)
            except (OSError, OverflowError) as exc:
                # Said which flag: it was "[Errno 9] Bad file descriptor".
                why = getattr(exc, "strerror", None) or str(exc)
                raise OSError(f"fd {bind.fd}: {why}") from None
            is_unix = sock.family == socket.AF_UNIX
            sock.detach()
            name = core.listen_fd(bind.fd, is_unix, backlog, tls)
            if name[1] is not None:  # a TCP socket's port
                self.ports.append(name[1])
        self.sockets.append(name)

    async def _shutdown(self, core: CoreServer, keep: asyncio.Task[None] | None = None) -> None:
        logger.info("Shutting down")
        core.close_listeners()
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + self.config.graceful_timeout
        # Connections accepted but not read yet stay open a moment: their
        # request may be in flight (a rolling restart must refuse none).
        fresh_deadline = min(now + FRESH_GRACE, deadline)
        while loop.time() < deadline and (
                core.busy_connections or (core.connections and loop.time() < fresh_deadline)):
            await asyncio.sleep(0.02)
        core.close_all()
        if core.accept_drops:
            logger.warning("%d connections closed at accept (out of memory)", core.accept_drops)
        # Give apps their disconnect and the close callbacks one turn.
        for _ in range(3):
            await asyncio.sleep(0)
        # The lifespan task lives on until lifespan.shutdown: don't wait for it.
        tasks = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task()
                 and t is not keep]
        if not tasks:
            return
        # Apps just got their disconnect: a moment to finish on their own,
        # then they are cancelled (their clients are gone).
        close_timeout = self.config.application_close_timeout
        _, pending = await asyncio.wait(tasks, timeout=min(1.0, close_timeout))
        for task in pending:
            # Not twice: the core cancels an app application_close_timeout
            # after its disconnect, and a second cancel would cut short the
            # cleanup it runs on the first.
            if not task.cancelling():
                task.cancel()
        if pending:
            # At least a moment for the cleanup a cancellation runs (with 0
            # the tasks were left pending as the loop closed: 'Task was
            # destroyed but it is pending!').
            _, pending = await asyncio.wait(pending, timeout=max(close_timeout, 1.0))
        if pending:
            # Cancelled and still running once their cleanup time is over:
            # an app that caught the CancelledError and went on.
            logger.warning("%d application task(s) did not end after its cancellation: "
                           "cancelled again", len(pending))
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        for task in pending:
            logger.error("Application task still running as the loop closes: %r", task)

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> bool:
        """True if this call installed them (run() did not before)."""
        if threading.current_thread() is not threading.main_thread() or self._signals:
            return False
        for sig in HANDLED_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        self._signals = loop
        return True

    def _remove_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._signals is not loop:
            return
        self._signals = None
        for sig in HANDLED_SIGNALS:
            loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        if self._exiting:
            # Serving is over and an executor thread is still running (a
            # blocked sync view): the user insists.  The process ends by
            # the signal, as uvicorn's always does (status 128 + N).
            logger.warning("Exiting now: executor threads still running")
            assert self._signals is not None
            self._remove_signal_handlers(self._signals)
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)
            return
        if self._stop is not None and self._stop.is_set():
            # A second Ctrl-C: stop waiting for the grace period.
            if self.core is not None:
                self.core.close_all()
            return
        self.request_stop()


def _configure_loop(loop: asyncio.AbstractEventLoop, config: Config) -> None:
    """Daphne's loop settings: `ASGI_THREADS` sizes the default executor
    (run_in_executor(None, ...), asgiref's sync_to_async(thread_sensitive=False)),
    and verbosity 3 turns on asyncio's debug mode."""
    threads = os.environ.get("ASGI_THREADS", "").strip()
    if threads:
        if not is_decimal(threads) or int(threads) < 1:
            raise ConfigError(f"ASGI_THREADS must be a positive integer, not {threads!r}")
        loop.set_default_executor(ThreadPoolExecutor(max_workers=int(threads)))
    if config.verbosity >= 3:
        loop.set_debug(True)


def _describe(bind: Bind, name: Any) -> str:
    tls = " (TLS)" if bind.tls is not None else ""
    if bind.kind == "unix":
        return f"unix socket {bind.path}{tls}"
    if bind.kind == "fd" and name[1] is None:
        return f"inherited unix socket fd {bind.fd}{tls}"
    return f"TCP address {name[0]}:{name[1]}{tls}"


def _remove_stale_socket(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISSOCK(mode):
        os.unlink(path)


def run(app: Any, **kwargs: Any) -> int:
    """Serve `app` (an ASGI app or "module:attr") with `Config(**kwargs)`."""
    config = Config(app, **kwargs)
    if config.workers is not None:
        from .supervisors import Supervisor

        return Supervisor(config).run()
    return Server(config).run()
