"""Daphne's access log format, written by an action_logger.

One line per HTTP response and per WebSocket event, as Daphne writes them:

    127.0.0.1:51000 - - [01/Dec/2026:10:00:00] "GET /path?q=1" 200 13
    127.0.0.1:51002 - - [01/Dec/2026:10:00:01] "WSCONNECT /ws/chat/" - -

Cheap enough to be on by default: the date string is made once a second,
and the lines of one event-loop turn go out in one write (Daphne writes each
line to a buffered stdout, so under a pipe they show up late; these show up
at the end of the turn they were logged in).

On stdout (a pipe, terminal or socket) the writes never block the loop: a
reader that stops reading would stall every connection (Daphne's and
uvicorn's writes block).  What the pipe does not take waits, up to
_MAX_BACKLOG bytes, and is retried; lines beyond are dropped and counted
in a warning once it drains.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import socket
import stat
import sys
import time
from typing import Any, TextIO

logger = logging.getLogger("cdaphne")

_REQUESTS = {
    "connecting": "WSCONNECTING",
    "connected": "WSCONNECT",
    "disconnected": "WSDISCONNECT",
    "rejected": "WSREJECT",
}
# A write to a pipe up to this size is atomic (POSIX PIPE_BUF on Linux), so
# the lines of several workers sharing stdout never interleave mid-line.
_CHUNK = 4096
# Bytes of lines kept for a stdout that does not take them (README limits).
_MAX_BACKLOG = 1 << 20
_RETRY_SECONDS = 0.1
# At shutdown, how long the last lines may wait for a stalled stdout.
_CLOSE_WAIT_SECONDS = 1.0


class NonBlockingOut:
    """Writes to stdout that never block: a descriptor of its own for the
    same pipe or terminal opened with O_NONBLOCK (through /proc, so the
    flag is not set on the description other writers share), or
    MSG_DONTWAIT sends on a socket (journald)."""

    def __init__(self, fd: int | None, sock: socket.socket | None) -> None:
        self.fd = fd
        self.sock = sock

    @classmethod
    def for_stdout(cls) -> NonBlockingOut | None:
        """None where stdout is a regular file (never stalls) or unknown."""
        try:
            fd = sys.stdout.fileno()
            mode = os.fstat(fd).st_mode
            if stat.S_ISSOCK(mode):
                return cls(None, socket.socket(fileno=os.dup(fd)))
            if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
                flags = os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
                return cls(os.open(f"/proc/self/fd/{fd}", flags), None)
        except (OSError, ValueError, AttributeError):
            pass
        return None

    def write(self, data: bytes | memoryview) -> int:
        """Bytes written; raises BlockingIOError when none fit now."""
        if self.sock is not None:
            return self.sock.send(data, socket.MSG_DONTWAIT)
        assert self.fd is not None
        return os.write(self.fd, data)

    def wait_writable(self, timeout: float) -> bool:
        if self.sock is not None:
            return bool(select.select([], [self.sock], [], timeout)[1])
        assert self.fd is not None
        return bool(select.select([], [self.fd], [], timeout)[1])

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        elif self.fd is not None:
            os.close(self.fd)


class AccessLogGenerator:
    """`action_logger` writing one line per HTTP response or WebSocket event."""

    def __init__(self, stream: TextIO, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.stream: TextIO | None = stream
        self.loop = loop
        self._pending: list[str] = []
        self._scheduled = False
        self._second = -1
        self._date = ""
        # Stdout's non-blocking writer, the bytes it has not taken yet, and
        # the lines dropped beyond _MAX_BACKLOG.
        self._out: NonBlockingOut | None = None
        self._backlog = bytearray()
        self._dropped = 0
        self._retry: asyncio.TimerHandle | None = None

    @classmethod
    def open(cls, target: str, loop: asyncio.AbstractEventLoop | None = None
             ) -> AccessLogGenerator:
        """A log writing to `target`: a file (appended to) or '-' for stdout."""
        if target == "-":
            log = cls(sys.stdout, loop)
            log._out = NonBlockingOut.for_stdout()
            return log
        return cls(open(target, "a"), loop)  # noqa: SIM115 - lives as long as the server

    def __call__(self, protocol: str, action: str, details: dict[str, Any]) -> None:
        if protocol == "http" and action == "complete":
            request = f"{details['method']} {details['path']}"
            self.write(details["client"], request, details["status"], details["size"])
        elif protocol == "websocket" and action in _REQUESTS:
            self.write(details["client"], f"{_REQUESTS[action]} {details['path']}")

    def write(self, host: Any, request: str, status: Any = None, length: Any = None) -> None:
        """Queue one NCSA-style line; it is written at the end of this loop turn."""
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._date = time.strftime("%d/%b/%Y:%H:%M:%S", time.localtime(second))
        self._pending.append(
            f'{host or "-"} - - [{self._date}] "{request}" {status or "-"} {length or "-"}\n'
        )
        if self._scheduled:
            return
        loop = self.loop or asyncio._get_running_loop()
        if loop is None or loop.is_closed():
            self.flush()
            return
        self._scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write the queued lines, in chunks that end on a line boundary."""
        self._scheduled = False
        lines, self._pending = self._pending, []
        stream = self.stream
        if stream is None or not lines:
            return
        if self._out is not None:
            self._queue(lines)
            return
        try:
            chunk: list[str] = []
            size = 0
            for line in lines:
                if size + len(line) > _CHUNK and chunk:
                    stream.write("".join(chunk))
                    stream.flush()
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line)
            stream.write("".join(chunk))
            stream.flush()
        except (OSError, ValueError) as exc:
            # stdout closed (a pipe whose reader left): stop logging, keep serving.
            self.stream = None
            logger.warning("Access log disabled: cannot write to it (%s)", exc)

    # ---- stdout without blocking ----------------------------------------
    def _queue(self, lines: list[str]) -> None:
        data = "".join(lines).encode("utf-8", "replace")
        if len(self._backlog) + len(data) > _MAX_BACKLOG:
            self._dropped += len(lines)
        else:
            self._backlog += data
        self._drain()

    def _drain(self) -> None:
        """Writes what stdout takes now, in chunks of whole lines (a pipe
        takes each at once or not at all); retries later for the rest."""
        self._retry = None
        out = self._out
        while self._backlog and out is not None:
            # A line over _CHUNK goes alone: not atomic, but the lines
            # after it are not taken into its write.
            end = (self._backlog.rfind(b"\n", 0, _CHUNK) + 1 or self._backlog.find(b"\n") + 1
                   or len(self._backlog))
            try:
                n = out.write(memoryview(self._backlog)[:end])
            except BlockingIOError:
                n = 0
            except OSError as exc:
                self._disable(exc)
                return
            if n == 0:
                self._schedule_retry()
                return
            del self._backlog[:n]
        if self._dropped and not self._backlog:
            logger.warning("Access log: %d lines dropped while stdout was not read",
                           self._dropped)
            self._dropped = 0

    def _schedule_retry(self) -> None:
        loop = self.loop or asyncio._get_running_loop()
        if self._retry is None and loop is not None and not loop.is_closed():
            self._retry = loop.call_later(_RETRY_SECONDS, self._drain)

    def _disable(self, exc: OSError) -> None:
        # stdout closed (a pipe whose reader left): stop logging, keep serving.
        self.stream = None
        if self._out is not None:
            self._out.close()
            self._out = None
        # A new one: the failed write's traceback (exc) still holds a
        # memoryview of the old, which cannot be resized while it lives.
        self._backlog = bytearray()
        logger.warning("Access log disabled: cannot write to it (%s)", exc)

    def close(self) -> None:
        """Writes what is left, waiting at most _CLOSE_WAIT_SECONDS for a
        stdout that does not take it."""
        self.flush()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        out = self._out
        deadline = time.monotonic() + _CLOSE_WAIT_SECONDS
        while out is not None and self._backlog:
            left = deadline - time.monotonic()
            if left <= 0 or not out.wait_writable(left):
                break
            self._drain()
            out = self._out
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._out is not None:
            self._out.close()
            self._out = None
