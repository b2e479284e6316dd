"""receive() reuses its waiter, futures and StopIteration (waiter.c,
cycle.c): hostile-but-legal apps (tests/apps/wsreuse.py) must still see
every message exactly once, in order, and keep what they hold."""

from __future__ import annotations

import json
import time

import pytest
import websocket

from .conftest import Reader, connect, recv_all

APP = "tests.apps.wsreuse:app"
N = 300


def send_numbered(ws, n: int = N) -> list[str]:
    """Sends "0".."n-1" then "end", in bursts with pauses between (so the
    app both finds messages queued and waits for them)."""
    sent = []
    for i in range(n):
        ws.send(str(i))
        sent.append(str(i))
        if i % 7 == 3:
            time.sleep(0.002)
    ws.send("end")
    return sent + ["end"]


def assert_seen_once_in_order(url: str) -> None:
    """One connection: the numbered messages out, then the app's list of
    what it saw, which must be exactly what was sent."""
    ws = websocket.create_connection(url, timeout=30)
    sent = send_numbered(ws)
    seen = json.loads(ws.recv())
    ws.close()
    assert seen == sent


@pytest.fixture
def reuse_server(serve):
    return serve(APP)


@pytest.mark.parametrize(
    "path",
    [
        "/default",
        "/wait-for",
        "/shield",
        "/wait-set",
        "/cancel-task",
        "/two-tasks",
        "/groups",
        "/keeper",
        "/traced",
    ],
)
def test_each_message_is_seen_once_in_order(reuse_server, path):
    assert_seen_once_in_order(reuse_server.ws_url(path))


@pytest.mark.parametrize("path", ["/default", "/wait-for", "/two-tasks", "/keeper"])
def test_each_message_is_seen_once_with_pings_every_tick(serve, path):
    # --ping-interval 0.01: the tick drops the spare futures while
    # receive()s are pending, often.
    proc = serve(APP, "--ping-interval", "0.01", "--ping-timeout", "30")
    assert_seen_once_in_order(proc.ws_url(path))


@pytest.mark.parametrize("path", ["/default", "/cancel-task"])
def test_each_message_is_seen_once_without_pings(serve, path):
    proc = serve(APP, "--ping-interval", "0")
    assert_seen_once_in_order(proc.ws_url(path))


def test_messages_made_in_ones_the_app_let_go_of_are_new_dicts(reuse_server):
    # Text and binary messages, in bursts and one at a time: each comes as
    # a new {"type", "text" | "bytes"} dict whatever the app did to the
    # ones before (tests/apps/wsreuse.py mutator).
    ws = websocket.create_connection(reuse_server.ws_url("/mutator"), timeout=30)
    sent = []
    for i in range(N):
        if i % 5 in (1, 2):
            ws.send_binary(str(i).encode())
        else:
            ws.send(str(i))
        sent.append(str(i))
        if i % 7 == 3:
            time.sleep(0.002)
    ws.send("end")
    seen = json.loads(ws.recv())
    ws.close()
    assert seen == sent + ["end"]


def test_a_value_the_app_put_in_a_message_goes_when_the_message_is_let_go_of(serve):
    # A message whose payload the app replaced kept that value alive in the
    # dict kept for the next message of its kind (cycle.c free_msg): with
    # only binary messages after it, until a ping tick (none here).
    proc = serve(APP, "--ping-interval", "0")
    ws = websocket.create_connection(proc.ws_url("/own-values"), timeout=30)
    for _ in range(3):
        ws.send("put")
        assert ws.recv() == "ok"
        for _ in range(2):
            ws.send_binary(b"check")
            assert ws.recv() == "ok"
    ws.send("end")
    seen = json.loads(ws.recv())
    ws.close()
    assert seen == ["put", "gone", "gone"] * 3 + ["end"]


def test_disconnect_while_a_reused_future_is_pending(reuse_server):
    for rounds in range(1, 4):
        ws = websocket.create_connection(reuse_server.ws_url("/slow-disconnect"))
        sent = [str(i) for i in range(20 * rounds)]
        for text in sent:
            ws.send(text)
        time.sleep(0.05)  # The app waits in receive() again.
        ws.close()
        expect = json.dumps(sent + ["! websocket.disconnect"])
        lines = reuse_server.wait_log("slow-disconnect saw ", count=rounds)
        assert lines[-1].string.split("saw ", 1)[1] == expect


@pytest.mark.parametrize("path", ["/", "/two-readers"])
def test_http_body_in_small_chunks_comes_whole_and_in_order(reuse_server, path):
    # "/": read under tiny timeouts; "/two-readers": by two tasks, one of
    # them cancelled over and over.
    sock = connect(reuse_server)
    chunks = [bytes([65 + i % 26]) * (1 + i % 5) for i in range(400)]
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n".encode()
        + b"Connection: close\r\n\r\n"
    )
    for i, c in enumerate(chunks):
        sock.sendall(b"%x\r\n%s\r\n" % (len(c), c))
        if i % 9 == 4:
            time.sleep(0.002)
    sock.sendall(b"0\r\n\r\n")
    data = recv_all(sock, timeout=30)
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert body == b"".join(chunks)


@pytest.mark.parametrize("path", ["/sync", "/async"])
def test_channels_consumers_see_each_message_once_in_order(serve, path):
    proc = serve("tests.apps.wsreuse_channels:app")
    for _ in range(3):
        assert_seen_once_in_order(proc.ws_url(path))


@pytest.mark.parametrize("path", ["/default", "/wait-for", "/two-tasks", "/keeper"])
def test_each_message_is_seen_once_in_asyncio_debug_mode(serve, path):
    # Debug mode: futures carry their source traceback, the loop checks
    # more; kept futures are made new under it too.
    proc = serve(APP, env={"PYTHONASYNCIODEBUG": "1"})
    assert_seen_once_in_order(proc.ws_url(path))


# receive() called on the loop, its awaitable awaited in another thread:
# that thread took the message (touching the connection, its libuv handles
# and the loop's futures, racing with the loop).  Now the awaitable
# refuses (RuntimeError, as asyncio does for a future of another loop),
# touches nothing, and the next receive() on the loop gets the message.
OFF_THREAD = "RuntimeError:receive() awaited outside the server's event loop thread"


@pytest.mark.parametrize("path", ["/hand", "/run", "/threadsafe"])
def test_receive_awaited_in_another_thread_is_refused_and_loses_nothing(serve, path):
    proc = serve("tests.apps.awaitthread:app")
    ws = websocket.create_connection(proc.ws_url(path), timeout=30)
    ws.send("m1")
    ws.send("m2")
    report = json.loads(ws.recv())
    ws.close()
    assert report == {"off": [OFF_THREAD], "next": "m1"}


def test_waiting_receive_resumed_in_another_thread_is_refused(serve):
    # Yielded on the loop, its future done ("m1" is there), then send(),
    # throw() and close() from another thread: each refused.
    proc = serve("tests.apps.awaitthread:app")
    ws = websocket.create_connection(proc.ws_url("/resumed"), timeout=30)
    assert ws.recv() == "go"
    ws.send("m1")
    ws.send("m2")
    report = json.loads(ws.recv())
    ws.close()
    assert report == {"off": [OFF_THREAD] * 3, "next": "m1"}


@pytest.mark.parametrize("path", ["/hand", "/run"])
def test_http_receive_awaited_in_another_thread_keeps_the_body(serve, path):
    proc = serve("tests.apps.awaitthread:app")
    with connect(proc) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nm1" % path.encode())
        r = Reader(sock, 30).response()
    assert r.status == 200
    assert json.loads(r.body) == {"off": [OFF_THREAD], "next": "m1"}


def test_waiting_send_awaited_in_another_thread_is_refused(serve):
    # send() on the loop returns an awaitable that waits for the output to
    # drain (a loop future): awaited in another thread, refused too.
    proc = serve("tests.apps.awaitthread:app", "--write-buffer-size", "1")
    with connect(proc) as sock:
        sock.sendall(b"GET /send HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = recv_all(sock, timeout=30)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    # Chunked: the last chunk before the terminator is the report.
    report = body[: -len(b"\r\n0\r\n\r\n")].rpartition(b"\r\n")[2]
    assert json.loads(report) == [
        "RuntimeError:send() awaited outside the server's event loop thread"
    ]
