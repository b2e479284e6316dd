"""Daphne's access log format, written by an action_logger.

One line per HTTP response and per WebSocket event, as Daphne writes them:

    127.0.0.1:51000 - - [01/Dec/2026:10:00:00] "GET /path?q=1" 200 13
    127.0.0.1:51002 - - [01/Dec/2026:10:00:01] "WSCONNECT /ws/chat/" - -

Cheap enough to be on by default: the date string is made once a second,
and the lines of one event-loop turn go out in one write (Daphne writes each
line to a buffered stdout, so under a pipe they show up late; these show up
at the end of the turn they were logged in).
"""

from __future__ import annotations

import asyncio
import logging
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


class AccessLogGenerator:
    """`action_logger` writing one line per HTTP response or WebSocket event."""

    def __init__(self, stream: TextIO, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.stream: TextIO | None = stream
        self.loop = loop
        self._pending: list[str] = []
        self._scheduled = False
        self._second = -1
        self._date = ""

    @classmethod
    def open(cls, target: str, loop: asyncio.AbstractEventLoop | None = None
             ) -> AccessLogGenerator:
        """A log writing to `target`: a file (appended to) or '-' for stdout."""
        if target == "-":
            return cls(sys.stdout, loop)
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
