"""Red team, session 8: a receive() awaitable whose last reference is
dropped in another thread after its connection is gone and its app
returned (HTTP keep-alive and close, WebSocket, WebSocket with pub/sub
subscriptions).  The cycle is freed off the loop's thread: nothing of
libuv or of the loop's pub/sub registry may be touched there.  Run it
under ASan too: scripts/test-asan.sh tests/test_red8_drop.py."""

from __future__ import annotations

import json
import time

import httpx
from websockets.sync.client import connect

APP = "tests.apps.red8_drop:app"


def stats(proc) -> dict:
    return json.loads(httpx.get(proc.url("/stats"), timeout=10).content)


def test_receive_awaitables_dropped_in_other_threads_after_the_conn(serve):
    proc = serve(APP, "--ping-interval", "0")
    n = 0
    # HTTP: a new connection per request, then several on one keep-alive.
    for _ in range(5):
        assert httpx.get(proc.url("/?0.1"), timeout=10).content == b"ok"
        n += 1
    with httpx.Client(timeout=10) as client:
        for _ in range(5):
            assert client.get(proc.url("/?0.1")).content == b"ok"
            n += 1
    # WebSocket, with and without subscriptions.
    for path in ("/plain?0.1", "/sub?0.1") * 5:
        with connect(proc.ws_url(path)) as ws:
            ws.send("hi")
            assert ws.recv(timeout=10) == "hi"
        n += 1
    deadline = time.monotonic() + 30
    while len(stats(proc)["outcomes"]) < n:
        assert time.monotonic() < deadline, stats(proc)
        time.sleep(0.1)
    got = stats(proc)
    # Driven off the loop's thread: refused, nothing taken (or, once the
    # cycle let go of everything, a plain return).
    assert set(got["outcomes"]) <= {"RuntimeError", "returned"}, got
    # The freed cycles took their subscriptions with them: a publish now
    # reaches exactly the new subscriber, and the server goes on.
    with connect(proc.ws_url("/sub?5")) as ws:
        ws.send("hi")
        assert ws.recv(timeout=10) == "hi"
        assert httpx.get(proc.url("/pub"), timeout=10).content == b"ok"
        assert ws.recv(timeout=10) == "published"
    deadline = time.monotonic() + 30
    while True:
        counters = stats(proc)["counters"]
        if counters["ws"] == 0 and counters["cycles"] <= 2:
            break
        assert time.monotonic() < deadline, counters
        time.sleep(0.1)


def test_drops_racing_the_loop(serve):
    """Many conns whose awaitables are dropped at once in their threads
    while the loop serves others (delay 0: the drop races the close)."""
    proc = serve(APP, "--ping-interval", "0")
    for i in range(40):
        path = "/sub?0" if i % 2 else "/plain?0"
        with connect(proc.ws_url(path)) as ws:
            ws.send("x")
            assert ws.recv(timeout=10) == "x"
        assert httpx.get(proc.url("/?0"), timeout=10).content == b"ok"
    deadline = time.monotonic() + 30
    while len(stats(proc)["outcomes"]) < 80:
        assert time.monotonic() < deadline, stats(proc)
        time.sleep(0.1)
    assert set(stats(proc)["outcomes"]) <= {"RuntimeError", "returned"}
