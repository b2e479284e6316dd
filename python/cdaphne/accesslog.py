"""Daphne's access log format, written by an action_logger."""

from __future__ import annotations

import datetime
import sys
from typing import Any, TextIO

_REQUESTS = {
    "connecting": "WSCONNECTING",
    "connected": "WSCONNECT",
    "disconnected": "WSDISCONNECT",
    "rejected": "WSREJECT",
}


class AccessLogGenerator:
    """`action_logger` writing one line per HTTP response or WebSocket event."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    @classmethod
    def open(cls, target: str) -> AccessLogGenerator:
        if target == "-":
            return cls(sys.stdout)
        return cls(open(target, "a", buffering=1))  # noqa: SIM115 - lives as long as the server

    def __call__(self, protocol: str, action: str, details: dict[str, Any]) -> None:
        if protocol == "http" and action == "complete":
            request = f"{details['method']} {details['path']}"
            self.write(details["client"], request, details["status"], details["size"])
        elif protocol == "websocket" and action in _REQUESTS:
            self.write(details["client"], f"{_REQUESTS[action]} {details['path']}")

    def write(self, host: Any, request: str, status: Any = None, length: Any = None) -> None:
        date = datetime.datetime.now().strftime("%d/%b/%Y:%H:%M:%S")
        self.stream.write(
            f'{host or "-"} - - [{date}] "{request}" {status or "-"} {length or "-"}\n'
        )
        self.stream.flush()
