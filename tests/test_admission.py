"""--max-running-requests (csrc/admit.c): past it, HTTP requests wait their
turn while the worker keeps its core busy; apps that wait on something else,
a stop, and WebSockets are never held by it."""

from __future__ import annotations

import re
import signal
import time

import pytest
import websocket

from .conftest import Reader, connect

APP = "tests.apps.admission:app"


def get_all(proc, paths: list[str], timeout: float = 30.0) -> list[tuple[int, bytes]]:
    """Every request's head sent at once (each on its own connection, all
    connected first), then every response read."""
    socks = [connect(proc, timeout) for _ in paths]
    try:
        for sock, path in zip(socks, paths, strict=True):
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        out = []
        for sock in socks:
            r = Reader(sock, timeout).response()
            out.append((r.status, r.body))
        return out
    finally:
        for sock in socks:
            sock.close()


def most_running(proc) -> int:
    [(status, body)] = get_all(proc, ["/stats"])
    assert status == 200
    return int(body)


@pytest.mark.parametrize(("limit", "path", "n", "body", "most"), [
    # Six requests of 12 ms of CPU each, yielding every 2 ms: two run at
    # once (the last waits 48 ms of CPU, under the 0.5 s after which a
    # waiting request goes in anyway even on a machine that gives the
    # server a fifth of a core), and all six of 60 ms each with no limit.
    ("2", "/busy?ms=2&chunks=6", 6, b"done", 2),
    ("0", "/busy?ms=10&chunks=6", 6, b"done", 6),
    # Sleeping apps leave the core idle: the limit in force rises and every
    # request runs at once, as with no limit.
    ("2", "/sleep?s=0.5", 12, b"slept", 12),
], ids=["busy_core_holds_the_limit", "no_limit", "apps_waiting_on_a_timer_all_go_in"])
def test_how_many_requests_run_at_once(serve, limit, path, n, body, most):
    proc = serve(APP, "--max-running-requests", limit)
    assert get_all(proc, [path] * n) == [(200, body)] * n
    assert most_running(proc) == most


def test_a_request_that_waits_for_a_later_one_is_not_deadlocked(serve):
    proc = serve(APP, "--max-running-requests", "1")
    assert get_all(proc, ["/wait/a", "/set/a"]) == [(200, b"set"), (200, b"ok")]
    assert get_all(proc, ["/wait/b", "/wait/c", "/set/c", "/set/b"]) == [
        (200, b"set"), (200, b"set"), (200, b"ok"), (200, b"ok")]


def test_a_request_answered_while_it_waits_never_starts_its_app(serve):
    """--http-timeout answers 503 to both requests: the first, running (its
    app goes on, as under Daphne), and the second, still waiting for the
    one slot: its app never starts (it did once the first ended, and failed
    sending a second response).  The 1 ms timeout fires before a 2 ms window
    of admit.c could let the second in, however busy the machine."""
    proc = serve(APP, "--max-running-requests", "1", "--http-timeout", "0.001")
    first, second = "/busy?ms=10&chunks=30", "/busy?ms=1&chunks=1"
    assert get_all(proc, [first, second]) == [
        (503, b"Service Unavailable"), (503, b"Service Unavailable")]
    proc.wait_log(f"admission app: end {re.escape(first)}", timeout=30)
    # A waiting request goes in when the slot is given back, or after 0.5 s
    # of waiting at the latest.
    time.sleep(0.6)
    assert f"admission app: start {first}" in proc.log
    assert f"admission app: start {second}" not in proc.log


def test_a_websocket_is_never_held_by_the_limit(serve):
    """One HTTP request keeps the core busy (holding the one slot) until a
    WebSocket connects: the WebSocket's app runs meanwhile."""
    proc = serve(APP, "--max-running-requests", "1")
    sock = connect(proc)
    try:
        sock.sendall(b"GET /busy-until-ws HTTP/1.1\r\nHost: t\r\n\r\n")
        ws = websocket.create_connection(f"ws://{proc.host}:{proc.port}/", timeout=10)
        ws.close()
        r = Reader(sock, 10).response()
        assert (r.status, r.body) == (200, b"ws")
    finally:
        sock.close()


def test_requests_waiting_at_the_stop_are_served(serve):
    proc = serve(APP, "--max-running-requests", "1")
    socks = [connect(proc, 30) for _ in range(3)]
    try:
        for sock in socks:
            sock.sendall(b"GET /busy?ms=10&chunks=20 HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.2)  # the first runs (200 ms of CPU), two wait
        proc.send_signal(signal.SIGTERM)
        out = [Reader(s, 30).response() for s in socks]
        assert [(r.status, r.body) for r in out] == [(200, b"done")] * 3
    finally:
        for sock in socks:
            sock.close()
    assert proc.wait(30) == 0
    proc.stopped = True
