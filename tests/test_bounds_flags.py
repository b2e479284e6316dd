"""The bounds that had no flag of their own until the fourth session: the
pub/sub inbox of publishes from other threads (--pubsub-max-inbox,
--pubsub-max-inbox-bytes), the queue of messages waiting for Redis
(--pubsub-redis-max-queue) and the TLS read (--tls-read-size).  Each moves
with its flag, end to end; a bad value is one line and a non-zero exit."""

from __future__ import annotations

import os
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
                                  "--pubsub-redis-max-queue", "--tls-read-size"])
@pytest.mark.parametrize(("value", "says"), [("-1", "must not be negative"),
                                             ("lots", "'lots'")])
def test_bad_bound_value_is_one_line(flag, value, says):
    assert_one_clear_line(run_cli("-p", "0", flag, value, HTTP_APP), flag, says)


def test_zero_tls_read_size_is_refused():
    assert_one_clear_line(run_cli("-p", "0", "--tls-read-size", "0", HTTP_APP),
                          "tls_read_size")


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
