"""Connection lifetimes: graceful shutdown, application_close_timeout,
the minimum request body rate and lingering close.  Real server
processes, raw sockets."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import struct
import sys
import time
import types

import httpx
import pytest

from cdaphne._cdaphne import Server as CoreServer
from cdaphne.config import Config, ConfigError
from cdaphne.loop import new_event_loop

from .apps.common import send_text
from .conftest import Reader, connect, wait_until

APP = "tests.apps.lifetimes:app"
# Freed memory is filled with a pattern and never reused at once, so that
# a use-after-free crashes instead of reading stale but valid data.
MALLOC_CHECK = {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0:glibc.malloc.perturb=65"}


def recorded(tmp_path, name, timeout=5.0):
    path = tmp_path / name
    wait_until(path.exists, timeout)
    return json.loads(path.read_text())


def read_reply(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes; ECONNRESET fails."""
    sock.settimeout(timeout)
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


# ---- graceful shutdown -----------------------------------------------------

@pytest.mark.parametrize("env", [None, MALLOC_CHECK], ids=["plain", "malloc-check"])
def test_unix_head_completed_during_grace_period(serve, tmp_path, env):
    path = str(tmp_path / "s.sock")
    proc = serve(APP, "-u", path, "--timeout-graceful-shutdown", "5", port=False, env=env)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(b"GET /server HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # The listener is closed and freed by now.
        try:
            sock.sendall(b"\r\n")
            reply = read_reply(sock)
        except (BrokenPipeError, ConnectionResetError):
            reply = b""  # Closed at shutdown: fine, as long as no crash.
    if reply:
        assert reply.startswith(b"HTTP/1.1 200 "), reply
        body = reply.split(b"\r\n\r\n", 1)[1]
        assert json.loads(body)["server"] == [path, None]
    assert proc.wait(10) == 0, proc.log_tail()
    assert "Segmentation fault" not in proc.log


def test_the_stop_ends_an_app_that_swallows_its_cancellation(serve):
    """An app cancelled once (its client gone at the stop) that goes on is
    cancelled again once its cleanup time is over, not left pending as the
    loop closes (the stop skipped tasks already cancelling)."""
    proc = serve("tests.apps.stubborn:app", "--application-close-timeout", "1",
                 "--timeout-graceful-shutdown", "1")
    sock = connect(proc)
    try:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        proc.wait_log("stubborn app: started")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.log_tail()
    finally:
        sock.close()
    assert "stubborn app: cancelled twice, ending" in proc.log, proc.log_tail()
    assert "did not end after its cancellation" in proc.log, proc.log_tail()
    assert "Task was destroyed but it is pending" not in proc.log


def test_sigterm_closes_idle_and_half_sent_connections_at_once(serve):
    proc = serve(APP, "--timeout-graceful-shutdown", "30")
    idle = connect(proc)
    half = connect(proc)
    try:
        idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert Reader(idle).response().status == 200
        half.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.3)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert time.monotonic() - t0 < 5
        assert read_or_reset(idle) == b""
        assert read_or_reset(half) == b""
    finally:
        idle.close()
        half.close()


def test_sigterm_serves_the_first_request_of_a_fresh_connection(serve):
    """A connection accepted just before the stop, whose request bytes have
    not been read yet, is not idle: it gets its response (with
    Connection: close), so a rolling restart refuses no request."""
    proc = serve(APP, "--timeout-graceful-shutdown", "30")
    fresh = connect(proc)
    try:
        time.sleep(0.3)  # Accepted; nothing sent yet.
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait_log(r"Shutting down")
        fresh.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = read_reply(fresh)
        assert reply.startswith(b"HTTP/1.1 200 "), reply
        assert b"\r\nconnection: close\r\n" in reply.lower()
        assert proc.wait(20) == 0
        assert time.monotonic() - t0 < 5
    finally:
        fresh.close()


def test_sigterm_closes_a_fresh_connection_that_sends_nothing_soon(serve):
    proc = serve(APP, "--timeout-graceful-shutdown", "30")
    fresh = connect(proc)
    try:
        time.sleep(0.3)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert time.monotonic() - t0 < 5
        assert read_or_reset(fresh) == b""
    finally:
        fresh.close()


def read_or_reset(sock: socket.socket) -> bytes:
    try:
        return read_reply(sock)
    except ConnectionResetError:
        return b""


def test_closing_the_loop_frees_open_connections_and_listeners():
    """In process: a loop closed under a server that still listens and has
    a connection closes and frees both (no handle left without its close
    callback)."""
    async def app(scope, receive, send):
        await send_text(send, b"ok")

    loop = new_event_loop()
    try:
        core = CoreServer(loop.core, app, Config(app))
        name = core.listen_tcp("127.0.0.1", 0, 16)
        core_refs = sys.getrefcount(core)
        name_refs = sys.getrefcount(name)  # Ours and the listener's.
        with socket.create_connection(name, timeout=5) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")

            async def accepted():
                while core.connections == 0:
                    await asyncio.sleep(0.01)
            loop.run_until_complete(asyncio.wait_for(accepted(), 5))
            assert sys.getrefcount(core) == core_refs + 1  # The conn's.
            assert sys.getrefcount(name) == name_refs + 1
        loop.close()
    finally:
        if not loop.is_closed():
            loop.close()
    assert core.connections == 0
    assert sys.getrefcount(core) == core_refs
    assert sys.getrefcount(name) == name_refs - 1


def test_core_server_takes_every_option_from_its_config():
    """Defaults live in config.py only: the C server reads every attribute
    and names the one missing or of the wrong type."""
    import dataclasses

    async def app(scope, receive, send):
        pass

    loop = new_event_loop()
    try:
        full = dataclasses.asdict(Config(app))
        for name in ("max_header_count", "min_body_rate", "header_timeout", "root_path"):
            partial = types.SimpleNamespace(**{k: v for k, v in full.items() if k != name})
            with pytest.raises(AttributeError, match=f"'{name}'"):
                CoreServer(loop.core, app, partial)
        with pytest.raises(TypeError, match="'ping_interval' must be a number"):
            CoreServer(loop.core, app, Config(app, ping_interval="20"))
        with pytest.raises(ValueError, match="timeout_keep_alive"):
            CoreServer(loop.core, app, Config(app, timeout_keep_alive=0))
        with pytest.raises(ConfigError, match="timeout_keep_alive must be positive"):
            Config(app, timeout_keep_alive=0).validate()
        core = CoreServer(loop.core, app, types.SimpleNamespace(**full))
        assert core.connections == 0
    finally:
        loop.close()


# ---- application_close_timeout ---------------------------------------------

def test_close_timeout_cancels_app_whose_client_left_before_it_started(serve, tmp_path):
    proc = serve(APP, "--application-close-timeout", "1",
                 env={"CDAPHNE_TEST_DIR": str(tmp_path)})
    head = b"POST /forever HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    # Exactly one full read buffer (64 KiB), then EOF: the server reads the
    # request and the EOF in the same loop turn, so the connection is gone
    # before the app's task is started.  SIGSTOP makes sure that both are
    # queued before the server reads.
    sock = connect(proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGSTOP)
    try:
        sock.sendall(head + b"b" * (65536 - len(head)))
        sock.close()
    finally:
        proc.send_signal(signal.SIGCONT)
    recorded(tmp_path, "forever_started")
    ended = recorded(tmp_path, "forever", timeout=10)
    assert ended["outcome"] == "cancelled"
    assert ended["after"] < 5


def test_close_timeout_cancels_app_whose_own_deadline_ran_out_with_it(serve, tmp_path):
    # The app's own asyncio.timeout cancels its task in the same loop turn
    # as the close timeout comes (the task's cancelling() is 1 then, and
    # the timeout takes that cancel back): the close timeout must still
    # end the app, which then waits in receive() with its client gone.
    proc = serve(APP, "--application-close-timeout", "0.5",
                 env={"CDAPHNE_TEST_DIR": str(tmp_path)})
    sock = connect(proc)
    sock.sendall(b"GET /own_deadline?block=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.2)
    # A reset: the app hears at once (a FIN waits --half-close-grace).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    msg = recorded(tmp_path, "own_deadline_disconnect")["msg"]
    assert msg == {"type": "http.disconnect"}
    ended = recorded(tmp_path, "own_deadline", timeout=10)
    assert ended["outcome"] == "cancelled"
    assert ended["after"] < 5


# ---- a client leaving while a pipelined request waits ----------------------

# What the client pipelines behind a request still with the app: more than
# the server buffers (--max-header-size), so it stops reading.
BACKLOGS = {
    "oversized_head": b"HEAD / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"v" * 6000 + b"\r\n\r\n",
    "post_with_body": (b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
                       + b"x" * 100_000),
}


@pytest.mark.parametrize("backlog", sorted(BACKLOGS))
@pytest.mark.parametrize("transport,leave", [("tcp", "close"), ("tcp", "reset"),
                                             ("unix", "close")])
def test_client_leaving_behind_a_pipelined_backlog_disconnects_the_app(
        serve, tmp_path, backlog, transport, leave):
    # The server stops reading while the backlog waits for the app's
    # response; the app waits in receive() for http.disconnect, so the
    # client's FIN (behind unread bytes) or RST must still reach it.
    flags = ["--max-header-size", "4096", "--timeout-graceful-shutdown", "2"]
    env = {"CDAPHNE_TEST_DIR": str(tmp_path)}
    if transport == "unix":
        path = str(tmp_path / "s.sock")
        proc = serve(APP, "-u", path, *flags, port=False, env=env)
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(5)
        sock.connect(path)
    else:
        proc = serve(APP, *flags, env=env)
        sock = connect(proc)
    sock.sendall(b"GET /wait_disconnect HTTP/1.1\r\nHost: x\r\n\r\n")
    recorded(tmp_path, "waiting")
    sock.sendall(BACKLOGS[backlog])
    time.sleep(0.2)
    if leave == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    assert recorded(tmp_path, "wait_disconnect", timeout=10)["msg"] == {"type": "http.disconnect"}
    if transport == "tcp":
        with connect(proc) as again:
            again.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert Reader(again).response().status == 200


# ---- lingering close -------------------------------------------------------

def test_client_still_sending_a_huge_head_reads_the_431(serve):
    proc = serve(APP)
    big = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 190) for i in range(1000))  # ~200 KB
    with connect(proc) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
        reply = read_reply(sock)
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:100]
    assert reply.endswith(b"Request Header Fields Too Large")


def test_client_still_sending_a_big_body_reads_the_413(serve):
    proc = serve(APP, "--max-body-size", "1000")
    body = b"z" * 500_000
    with connect(proc) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                     % len(body) + body)
        reply = read_reply(sock)
    assert reply.startswith(b"HTTP/1.1 413 "), reply[:100]


def test_client_still_sending_a_chunked_body_reads_the_413(serve):
    proc = serve(APP, "--max-body-size", "1000")
    chunk = b"%x\r\n%s\r\n" % (10_000, b"y" * 10_000)
    with connect(proc) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + chunk * 30 + b"0\r\n\r\n")
        reply = read_reply(sock)
    assert reply.startswith(b"HTTP/1.1 413 "), reply[:100]


@pytest.mark.parametrize("tail", [b"zz\r\n", b"%x\r\n%s\r\n" % (2000, b"y" * 2000)],
                         ids=["bad_chunk", "over_max_body"])
def test_app_reading_a_body_the_server_rejects_gets_disconnect_at_once(serve, tmp_path, tail):
    # The server answers 400 or 413 for the app and lingers; the app in
    # receive() must hear of it then, not when the lingering close ends.
    proc = serve(APP, "--max-body-size", "1000", env={"CDAPHNE_TEST_DIR": str(tmp_path)})
    with connect(proc) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"\r\n3\r\nabc\r\n")
        time.sleep(0.3)  # The app waits in receive() for more.
        sock.sendall(tail)
        r = Reader(sock).response()
        assert r.status in (400, 413)
        seen = recorded(tmp_path, "upload")
        # The server shut down its side and lingers, discarding input, for
        # seconds: a byte sent now is dropped, not answered with an RST as
        # it would be once the server closed.
        try:
            sock.sendall(b"x")
            time.sleep(0.2)
            sock.sendall(b"x")
        except (BrokenPipeError, ConnectionResetError):
            pytest.fail("the app heard of the error only when the conn closed")
    assert seen == {"size": 3, "last": "http.disconnect", "after": seen["after"]}


def test_lingering_close_is_bounded_for_a_client_that_never_stops(serve):
    proc = serve(APP)
    with connect(proc) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 70000)
        sock.setblocking(False)
        t0 = time.monotonic()
        closed = False
        # Keep sending; the server discards for a bounded time and size.
        while time.monotonic() - t0 < 15:
            try:
                sock.send(b"a" * 65536)
            except BlockingIOError:
                time.sleep(0.01)
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        assert closed
        assert time.monotonic() - t0 < 10


def test_client_still_sending_a_body_the_app_did_not_read_reads_the_response(serve):
    proc = serve(APP)
    body = b"z" * 500_000
    with connect(proc) as sock:
        sock.sendall(b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                     % len(body) + body)
        # The response by its framing: the server lingers (closing after)
        # when the body is still coming, and keeps the connection alive
        # when all of it arrived before the app answered (Python 3.11,
        # where the app's task starts a loop turn later). Either way the
        # client reads the response instead of an RST.
        r = Reader(sock).response()
    assert r.status == 200, r
    assert r.body == b"ok"


# ---- minimum request body rate -------------------------------------------

RATE_FLAGS = ("--min-body-rate", "100", "--body-rate-grace", "1")


def trickle(sock: socket.socket, data: bytes, piece: int, interval: float,
            limit: float = 20.0) -> tuple[bytes, float]:
    """Send `data` `piece` bytes every `interval` s while reading; returns
    what the server sent until it closed, and when it closed."""
    t0 = time.monotonic()
    reply = b""
    sock.settimeout(interval)
    while time.monotonic() - t0 < limit:
        if data:
            try:
                sock.sendall(data[:piece])
            except (BrokenPipeError, ConnectionResetError):
                data = b""
            data = data[piece:]
        try:
            got = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not got:
            break
        reply += got
    return reply, time.monotonic() - t0


def test_body_trickling_below_the_minimum_rate_gets_408(serve, tmp_path):
    proc = serve(APP, *RATE_FLAGS, env={"CDAPHNE_TEST_DIR": str(tmp_path)})
    with connect(proc) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        reply, took = trickle(sock, b"x" * 1000, 1, 0.5)
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:100]
    assert took < 10
    seen = recorded(tmp_path, "upload")
    assert seen["last"] == "http.disconnect"
    assert seen["size"] < 100


def test_body_trickling_after_the_response_started_closes(serve, tmp_path):
    proc = serve(APP, *RATE_FLAGS, env={"CDAPHNE_TEST_DIR": str(tmp_path)})
    with connect(proc) as sock:
        sock.sendall(b"POST /upload_streaming HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 1000\r\n\r\n")
        reply, took = trickle(sock, b"x" * 1000, 1, 0.5)
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:100]
    assert b"started;" in reply
    assert took < 10
    assert recorded(tmp_path, "upload")["last"] == "http.disconnect"


def test_slow_upload_above_the_minimum_rate_passes(serve, tmp_path):
    proc = serve(APP, *RATE_FLAGS, env={"CDAPHNE_TEST_DIR": str(tmp_path)})
    with connect(proc) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Content-Length: 3000\r\n\r\n")
        reply, _ = trickle(sock, b"x" * 3000, 100, 0.1)  # 1000 B/s for 3 s
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:100]
    assert reply.endswith(b"got 3000")


def test_body_rate_counts_only_time_the_app_waits_for_the_body(serve, tmp_path):
    # The app reads nothing for 2.5 s and the client sends nothing then:
    # the client is not late, nobody asked it for bytes.
    proc = serve(APP, *RATE_FLAGS, env={"CDAPHNE_TEST_DIR": str(tmp_path)})
    with connect(proc, timeout=10) as sock:
        sock.sendall(b"POST /upload?delay=2.5 HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n")
        time.sleep(2.3)
        sock.sendall(b"y" * 2000)
        r = Reader(sock, timeout=10).response()
    assert r.status == 200
    assert r.body == b"got 2000"


def test_body_rate_zero_disables_the_check(serve, tmp_path):
    proc = serve(APP, "--min-body-rate", "0", "--body-rate-grace", "1",
                 env={"CDAPHNE_TEST_DIR": str(tmp_path)})
    with connect(proc) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Content-Length: 8\r\n\r\n")
        reply, _ = trickle(sock, b"x" * 8, 1, 0.4)
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:100]
    assert reply.endswith(b"got 8")


def test_default_body_rate_closes_a_byte_every_two_seconds_client(serve, tmp_path):
    proc = serve(APP, env={"CDAPHNE_TEST_DIR": str(tmp_path)})
    with connect(proc) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        reply, took = trickle(sock, b"x" * 100, 1, 2.0, limit=60)
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:100]
    assert took < 60
    assert recorded(tmp_path, "upload")["last"] == "http.disconnect"


def test_default_body_rate_lets_a_10_kb_per_second_upload_pass(serve, tmp_path):
    proc = serve(APP, env={"CDAPHNE_TEST_DIR": str(tmp_path)})
    with connect(proc) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Content-Length: 60000\r\n\r\n")
        reply, _ = trickle(sock, b"x" * 60_000, 1000, 0.1)  # 10 KB/s for 6 s
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:100]
    assert reply.endswith(b"got 60000")


# ---- half-close: the client's FIN after its request ------------------------


def test_request_then_fin_is_answered_then_closed(serve):
    # `printf 'GET / ...' | nc -N`, health checkers, some proxies: the
    # request, then shutdown(SHUT_WR).  The FIN ends the client's input, not
    # the exchange: the response is written, then the server closes.
    proc = serve(APP)
    with connect(proc) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        reader = Reader(sock)
        resp = reader.response()
        assert (resp.status, resp.body) == (200, b"ok")
        assert reader.read_to_eof() == b""


@pytest.mark.parametrize("view, body", [("/", b"hello"), ("/slow", b"slow"),
                                        ("/aslow", b"aslow")])
def test_django_view_answers_a_half_closed_client(serve, view, body):
    # Django's handler listens for http.disconnect while its view runs and
    # drops the response when it comes: at the FIN, a half-closed client
    # got nothing, even from a view that returns at once (uvicorn and
    # Daphne send nothing either: they take the FIN for a departure).  The
    # app now has --half-close-grace (5 s) from the FIN to start its
    # response before receive() says http.disconnect.
    proc = serve("tests.apps.django_views:application")
    assert httpx.get(proc.url("/")).text == "hello"  # Django is loaded
    with connect(proc) as sock:
        sock.sendall(f"GET {view} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        sock.shutdown(socket.SHUT_WR)
        reader = Reader(sock, timeout=10)
        resp = reader.response()
        assert (resp.status, resp.body) == (200, body)
        assert reader.read_to_eof() == b""


def test_pipelined_requests_then_fin_are_all_answered_in_order(serve):
    proc = serve(APP)
    with connect(proc) as sock:
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /server HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        )
        sock.shutdown(socket.SHUT_WR)
        reader = Reader(sock)
        first, second, third = reader.response(), reader.response(), reader.response()
        assert (first.status, first.body) == (200, b"ok")
        assert second.status == 200 and b'"server"' in second.body
        assert (third.status, third.body) == (200, b"got 3")
        assert reader.read_to_eof() == b""


@pytest.mark.parametrize("route", ["wait_disconnect", "start_then_wait"])
def test_fin_reaches_an_app_waiting_in_receive_and_its_answer_still_goes_out(
    serve, tmp_path, route
):
    # After the whole body, receive() says http.disconnect once the app
    # has had --half-close-grace (5 s; 1 s here) from the FIN to start its
    # response, as when the client left (a long-poll app cleans up: the
    # wire cannot tell a half-close from a departure); the response it
    # sends anyway is written, for a client that only half-closed.
    # start_then_wait starts its response within the grace, then waits in
    # receive(): it hears of the FIN when the grace ends (it waited forever:
    # a half-closed socket gives no other sign).
    proc = serve(APP, "--half-close-grace", "1", env={"CDAPHNE_TEST_DIR": str(tmp_path)})
    with connect(proc) as sock:
        sock.sendall(f"GET /{route} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        if route == "wait_disconnect":
            recorded(tmp_path, "waiting")
        sock.shutdown(socket.SHUT_WR)
        msg = recorded(tmp_path, route, timeout=10)["msg"]
        assert msg == {"type": "http.disconnect"}
        reader = Reader(sock)
        resp = reader.response()
        assert (resp.status, resp.body) == (200, b"late")
        assert reader.read_to_eof() == b""


@pytest.mark.parametrize("cut", ["head", "body"])
def test_fin_inside_a_request_closes_and_disconnects_the_app(serve, tmp_path, cut):
    # A request that can never end is not kept: nothing answers a cut head,
    # and the app reading a cut body gets http.disconnect.
    proc = serve(APP, env={"CDAPHNE_TEST_DIR": str(tmp_path)})
    with connect(proc) as sock:
        if cut == "head":
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        else:
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        sock.shutdown(socket.SHUT_WR)
        assert read_reply(sock) == b""
    if cut == "body":
        assert recorded(tmp_path, "upload")["last"] == "http.disconnect"


def test_fin_behind_a_pipelined_request_with_its_body_cut_ends_it(serve, tmp_path):
    # The first request is answered; the second's body can never end: its
    # app gets http.disconnect and the conn closes after the first answer.
    proc = serve(APP, env={"CDAPHNE_TEST_DIR": str(tmp_path)})
    with connect(proc) as sock:
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"
        )
        sock.shutdown(socket.SHUT_WR)
        reader = Reader(sock)
        assert reader.response().body == b"ok"
        assert reader.read_to_eof() == b""
    assert recorded(tmp_path, "upload")["last"] == "http.disconnect"


def test_client_that_closed_fully_is_a_disconnect_once_a_write_fails(serve, tmp_path):
    # A full close() sends the same FIN as a half-close: the response goes
    # on, the client's kernel answers it with a reset, and the failed write
    # is the disconnect (the app that never reads is cancelled after
    # --application-close-timeout).
    proc = serve(APP, "--application-close-timeout", "1",
                 env={"CDAPHNE_TEST_DIR": str(tmp_path)})
    sock = connect(proc)
    sock.sendall(b"GET /stream_forever HTTP/1.1\r\nHost: x\r\n\r\n")
    recorded(tmp_path, "stream_started")
    sock.close()
    assert recorded(tmp_path, "stream", timeout=10)["outcome"] == "cancelled"


def test_half_closed_request_the_app_never_answers_ends_at_the_http_timeout(serve, tmp_path):
    # A half-closed conn is bounded as any request with the app: by
    # -t/--http-timeout (503 before the response started), then it closes.
    proc = serve(APP, "--http-timeout", "1", env={"CDAPHNE_TEST_DIR": str(tmp_path)})
    with connect(proc) as sock:
        sock.sendall(b"GET /forever HTTP/1.1\r\nHost: x\r\n\r\n")
        recorded(tmp_path, "forever_started")
        sock.shutdown(socket.SHUT_WR)
        reader = Reader(sock, timeout=10)
        assert reader.response().status == 503
        assert reader.read_to_eof() == b""
