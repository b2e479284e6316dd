"""Connections and sessions that come and go leave nothing behind in the
server: its live-object counters return to their baseline, shared objects
keep their reference counts, and RSS stays flat (issue 9, item 11)."""

from __future__ import annotations

import json
import socket

from .conftest import Reader, connect

APP = "tests.apps.churn:app"


def server_report(proc, types: int = 0) -> dict:
    """What tests.apps.churn reports about its own process."""
    with connect(proc) as sock:
        sock.sendall(b"GET /_report?types=%d HTTP/1.1\r\nHost: x\r\n"
                     b"Connection: close\r\n\r\n" % types)
        return json.loads(Reader(sock).response().body)


def http_close(proc, n: int) -> None:
    """n requests, each on its own `Connection: close` connection."""
    for _ in range(n):
        with socket.create_connection((proc.host, proc.port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            resp = Reader(sock).response()
            assert resp.status == 200, resp


def test_response_headers_are_released(serve):
    """http.response.start's header pairs are released with the response
    (the copy of the header list used to keep one reference per pair)."""
    proc = serve(APP)
    http_close(proc, 20)
    before = server_report(proc)
    http_close(proc, 200)
    after = server_report(proc)
    assert after["shared_header_refs"] == before["shared_header_refs"]
    assert after["counters"] == before["counters"]
