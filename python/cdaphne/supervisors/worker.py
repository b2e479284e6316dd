"""A worker process: `python -c "...worker import main; main()" CTL_FD BUS_FD
SHARE_FD SLOT`.

The supervisor sends the settings (a pickle, length-prefixed) on the
control socket CTL_FD, then reads one byte per event from it:

    R   the worker listens and serves (sent once)
    .   heartbeat, from a timer on the worker's event loop: a loop that is
        blocked stops sending them
    M   the worker has started --max-requests requests: replace me
    E   followed by a message (UTF-8) up to EOF, instead of R: why it
        cannot start (the app's import, a bind...).  The supervisor says
        it once for all workers, which all fail the same way.

EOF on the control socket means the supervisor is gone: the worker drains
and exits as on SIGTERM.  BUS_FD is the channel layer's link (bus.py).
SHARE_FD (or -1) is the page where workers sharing a listening socket
publish their connection counts, SLOT this worker's place in it
(Config.accept_balance).
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import pickle
import random
import socket
import struct
import sys
import traceback
from typing import Any

from ..config import Bind, Config
from ..server import Server
from . import bus

logger = logging.getLogger("cdaphne")

READY = b"R"
BEAT = b"."
RETIRE = b"M"
ERROR = b"E"


def heartbeat_interval(timeout: float) -> float:
    """Seconds between heartbeats: several per healthcheck timeout."""
    return min(1.0, timeout / 4)


class WorkerServer(Server):
    """A Server that reports to its supervisor over the control socket."""

    def __init__(self, config: Config, ctl: socket.socket, *, max_requests: int | None,
                 healthcheck_timeout: float, share: mmap.mmap | None = None,
                 slot: int = -1) -> None:
        super().__init__(config)
        self.ctl = ctl
        self.share = share
        self.slot = slot
        self.max_requests = max_requests
        self.interval = heartbeat_interval(healthcheck_timeout)
        self._beat: asyncio.TimerHandle | None = None

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.ctl.fileno(), self._on_ctl)
        if bus.current is not None:
            bus.current.attach(loop)
        try:
            return await super().serve()
        finally:
            if bus.current is not None:
                bus.current.detach()
            loop.remove_reader(self.ctl.fileno())
            if self._beat is not None:
                self._beat.cancel()

    def _announce(self, binds: list[Bind]) -> None:
        logger.debug("Worker serving (Python %s)", sys.version.split()[0])
        self._share()  # Before READY: the others balance with us from then.
        self._send(READY)
        self._tick()

    def _share(self) -> None:
        """Publish our connection count (Config.accept_balance)."""
        if self.share is not None and self.core is not None:
            self.core.share_accept(self.share, self.slot)

    def _tick(self) -> None:
        self._send(BEAT)
        self._share()  # The count, refreshed after connections closed.
        core = self.core
        if (self.max_requests is not None and core is not None
                and core.requests >= self.max_requests):
            # Repeated on every tick until the supervisor stops this worker.
            self._send(RETIRE)
        assert self.loop is not None
        self._beat = self.loop.call_later(self.interval, self._tick)

    # Why this worker cannot start goes to the supervisor, which says it
    # once (all workers fail alike); here only if it is gone.
    def _report_error(self, message: str) -> None:
        if not self._tell_supervisor(message):
            super()._report_error(message)

    def _report_startup_failure(self, text: str, exc: BaseException | None) -> None:
        # The line, then the traceback: the supervisor prints the first
        # failing worker's only.
        full = text
        if exc is not None:
            full += "\n" + "".join(traceback.format_exception(exc)).rstrip()
        if not self._tell_supervisor(full):
            super()._report_startup_failure(text, exc)

    def _tell_supervisor(self, text: str) -> bool:
        try:
            self.ctl.settimeout(5.0)
            self.ctl.sendall(ERROR + text.encode("utf-8", "replace"))
        except OSError:
            return False
        return True

    def _send(self, msg: bytes) -> None:
        try:
            self.ctl.send(msg)
        except (BlockingIOError, OSError):
            pass  # The supervisor is busy or gone; EOF will tell.

    def _on_ctl(self) -> None:
        try:
            data = self.ctl.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            logger.warning("Supervisor gone: shutting down")
            assert self.loop is not None
            self.loop.remove_reader(self.ctl.fileno())
            self.request_stop()


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("control socket closed")
        buf += chunk
    return buf


def _listen_binds(listen: list[tuple[Any, ...]], backlog: int) -> list[Bind]:
    """Binds for this worker: inherited fds, or its own SO_REUSEPORT sockets
    (each with the TLS options of the endpoint it came from)."""
    binds = []
    for spec in listen:
        if spec[0] == "fd":
            binds.append(Bind("fd", fd=spec[1], tls=spec[2]))
            continue
        _, family, host, port, tls = spec
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        binds.append(Bind("fd", fd=sock.detach(), tls=tls))
    return binds


def main() -> None:
    ctl = socket.socket(fileno=int(sys.argv[1]))
    ctl.set_inheritable(False)  # Not for the app's own subprocesses.
    # Before the app (and its channel layer) loads.
    bus.current = bus.WorkerBus(int(sys.argv[2]))
    (size,) = struct.unpack("!I", _recv_exact(ctl, 4))
    payload = pickle.loads(_recv_exact(ctl, size))
    ctl.setblocking(False)
    config: Config = payload["config"]
    config.listen = _listen_binds(payload["listen"], config.backlog)
    limit = payload["max_requests"]
    if limit is not None:
        limit += random.randint(0, payload["max_requests_jitter"])
    share = None
    share_fd, slot = int(sys.argv[3]), int(sys.argv[4])
    if share_fd >= 0:
        share = mmap.mmap(share_fd, 0)
        os.close(share_fd)
    server = WorkerServer(config, ctl, max_requests=limit,
                          healthcheck_timeout=payload["healthcheck_timeout"],
                          share=share, slot=slot)
    sys.exit(server.run())


if __name__ == "__main__":
    main()
