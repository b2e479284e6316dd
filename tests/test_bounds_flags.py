"""The bounds that had no flag of their own until the fourth session: the
pub/sub inbox of publishes from other threads (--pubsub-max-inbox,
--pubsub-max-inbox-bytes), the queue of messages waiting for Redis
(--pubsub-redis-max-queue), the TLS read (--tls-read-size) and, since the
fifth, the plain read (--read-size).  Each moves with its flag, end to end;
a bad value is one line and a non-zero exit."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl

import httpx
import pytest
import websocket

from .django_helpers import redis_server
from .test_cli import APP as HTTP_APP
from .test_cli import assert_one_clear_line, run_cli
from .test_tls import pki, tls_flags  # noqa: F401 - pki is a fixture

APP = "tests.apps.bounds:app"


# ---- the command line -------------------------------------------------------

@pytest.mark.parametrize("flag", ["--pubsub-max-inbox", "--pubsub-max-inbox-bytes",
                                  "--pubsub-redis-max-queue", "--tls-read-size",
                                  "--read-size", "--max-running-requests"])
@pytest.mark.parametrize(("value", "says"), [("-1", "must not be negative"),
                                             ("lots", "'lots'")])
def test_bad_bound_value_is_one_line(flag, value, says):
    assert_one_clear_line(run_cli("-p", "0", flag, value, HTTP_APP), flag, says)


def test_zero_tls_read_size_is_refused():
    assert_one_clear_line(run_cli("-p", "0", "--tls-read-size", "0", HTTP_APP),
                          "tls_read_size")


@pytest.mark.parametrize("value", ["0", str((16 << 20) + 1)])
def test_read_size_out_of_range_is_refused(value):
    assert_one_clear_line(run_cli("-p", "0", "--read-size", value, HTTP_APP),
                          "read_size must be 1..16777216", value)


# ---- pub/sub inbox ----------------------------------------------------------

def inbox_taken(proc, n: int, size: int = 1) -> int:
    """How many of n publishes from a thread the inbox takes while the loop
    is busy (it drains them afterwards)."""
    r = httpx.get(proc.url("/inbox"), params={"n": n, "size": size}, timeout=60)
    assert r.status_code == 200
    return r.json()


def test_pubsub_max_inbox_flag_sets_the_bound(serve):
    assert inbox_taken(serve(APP), 70_000) == 65_536  # config.py's default
    small = serve(APP, "--pubsub-max-inbox", "100")
    assert inbox_taken(small, 1_000) == 100
    assert inbox_taken(small, 1_000) == 100  # drained in between
    assert inbox_taken(serve(APP, "--pubsub-max-inbox", "0"), 70_000) == 70_000  # none


def test_pubsub_max_inbox_bytes_flag_sets_the_bound(serve):
    # 1000 bytes of text: a 1004-byte frame (4-byte header).
    proc = serve(APP, "--pubsub-max-inbox-bytes", str(10 * 1004))
    assert inbox_taken(proc, 100, size=1000) == 10
    # One message is always taken, however large.
    assert inbox_taken(proc, 100, size=20_000) == 1


# ---- the queue for Redis ----------------------------------------------------

def take(ws, n: int) -> list[str]:
    return [ws.recv() for _ in range(n)]


def burst(proc, tag: str, n: int) -> None:
    r = httpx.get(proc.url("/burst"), params={"topic": "news", "tag": tag, "n": n}, timeout=10)
    assert r.status_code == 200


@pytest.mark.redis
def test_pubsub_redis_max_queue_flag_sets_the_bound(serve, tmp_path):
    """Publishes made in one go while nothing is written to Redis: the
    queue keeps the first --pubsub-redis-max-queue, drops the rest."""
    with redis_server(tmp_path) as url:
        small = serve(APP, "--pubsub-redis", url, "--pubsub-redis-max-queue", "5")
        default = serve(APP, "--pubsub-redis", url)
        there = serve(APP, "--pubsub-redis", url)
        ws = websocket.create_connection(there.ws_url("/sub?topic=news"), timeout=10)
        try:
            assert ws.recv() == "ready"
            burst(small, "s", 20)
            assert take(ws, 5) == [f"s {i}" for i in range(5)]
            burst(small, "end", 1)  # The queue is empty again: not dropped.
            assert ws.recv() == "end 0"
            small.wait_log(r"Redis is behind \(5 messages waiting, "
                           r"--pubsub-redis-max-queue\); 1 messages dropped")
            burst(default, "d", 20)
            burst(default, "end", 1)
            assert take(ws, 21) == [f"d {i}" for i in range(20)] + ["end 0"]
            assert "Redis is behind" not in default.log
        finally:
            ws.close()


# ---- TLS read ---------------------------------------------------------------

RECORD = 16384  # A TLS record's plaintext, at most.


def largest_body_message(proc, pki) -> int:  # noqa: F811 - pki is the fixture's value
    """The largest http.request body of an 8 MiB TLS upload to an app that
    reads slowly, with --body-buffer-size 1: each is what one socket read
    decrypted (reading pauses after every read)."""
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    body = os.urandom(1 << 20) * 8
    r = httpx.post(f"https://localhost:{proc.port}/chunks", content=body, verify=ctx,
                   timeout=60)
    assert r.json()["size"] == len(body)
    return r.json()["largest"]


def test_tls_read_size_flag_sets_the_bound(serve, pki):  # noqa: F811
    flags = (*tls_flags(pki), "--body-buffer-size", "1")
    default = serve(APP, *flags)
    small = serve(APP, *flags, "--tls-read-size", "4096")
    large = serve(APP, *flags, "--tls-read-size", str(1 << 20))
    # One read: its ciphertext, plus the rest of a record begun earlier.
    assert largest_body_message(small, pki) <= 4096 + RECORD
    assert largest_body_message(default, pki) <= 65536 + RECORD
    assert largest_body_message(large, pki) > 65536 + RECORD


# ---- plain read -------------------------------------------------------------

def largest_plain_body_message(proc) -> int:
    """The largest http.request body of a 2 MiB upload to an app that reads
    slowly, with --body-buffer-size 1: each is what one socket read gave."""
    body = os.urandom(1 << 20) * 2
    r = httpx.post(proc.url("/chunks"), content=body, timeout=60)
    assert r.json()["size"] == len(body)
    return r.json()["largest"]


def test_read_size_flag_sets_the_bound(serve):
    flags = ("--body-buffer-size", "1")
    assert largest_plain_body_message(serve(APP, *flags, "--read-size", "4096")) <= 4096
    assert largest_plain_body_message(serve(APP, *flags)) <= 65536
    assert largest_plain_body_message(serve(APP, *flags, "--read-size", str(1 << 20))) > 65536


@pytest.mark.parametrize("size", ["1", "7", "4096"])
def test_a_small_read_size_still_serves_large_requests_and_messages(serve, size):
    proc = serve(APP, "--read-size", size, "--max-header-size", str(64 << 10))
    # A large head (one 40 KiB header) and a 1 MiB body, pipelined behind a
    # first request on the same connection: both come out whole.
    body = os.urandom(1 << 20)
    big = "b" * (40 << 10)
    one = (f"POST /digest HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", proc.port), timeout=60) as s:
        s.sendall(one + one)
        f = s.makefile("rb")
        for _ in range(2):
            assert f.readline().startswith(b"HTTP/1.1 200")
            length = 0
            while (line := f.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            got = json.loads(f.read(length))
            assert got == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                           "x-big": len(big)}
    # WebSocket messages larger than many reads, text and bytes, both ways.
    ws = websocket.create_connection(proc.ws_url("/echo"), timeout=60)
    try:
        data = os.urandom(512 << 10)
        ws.send_binary(data)
        assert ws.recv() == data
        text = "é" * (100 << 10)
        ws.send(text)
        assert ws.recv() == text
        for i in range(50):  # many small frames in few reads
            ws.send(f"m{i}")
        assert [ws.recv() for _ in range(50)] == [f"m{i}" for i in range(50)]
    finally:
        ws.close()
