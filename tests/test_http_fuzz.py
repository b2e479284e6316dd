"""Mutated requests (fixed seeds) must never crash or wedge the server."""

from __future__ import annotations

import random
import socket

import pytest

from .conftest import request

SEEDS = [
    b"GET /scope?a=1 HTTP/1.1\r\nHost: x\r\nX-A: b\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\nT: 1\r\nU: 2\r\n\r\n",
    b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    b"HEAD /stream HTTP/1.1\r\nHost: x\r\n\r\n",
]
TOKENS = [b"\r\n", b"\n", b"\x00", b":", b" ", b"\t", b"chunked", b"Content-Length: 9\r\n",
          b"Transfer-Encoding: chunked\r\n", b"ffffffffffffffff", b"-1",
          b"Connection: close\r\n", b"Upgrade: websocket\r\nConnection: upgrade\r\n",
          b"\xff", b"%", b"%zz", b"?", b"#", b"HTTP/1.1", b"0\r\n\r\n"]


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        i = rng.randrange(len(b) + 1)
        if op < 0.3 and b:
            del b[i:i + rng.randint(1, 5)]
        elif op < 0.6:
            b[i:i] = rng.choice(TOKENS)
        elif op < 0.8 and b:
            b[min(i, len(b) - 1)] = rng.randrange(256)
        else:
            b[i:i] = b[rng.randrange(len(b)):][:rng.randint(1, 30)]
    return bytes(b)


@pytest.mark.parametrize("seed", [1, 2])
def test_mutated_requests_do_not_crash_the_server(serve, seed):
    proc = serve("tests.apps.http1:app", "--max-body-size", "100000")
    rng = random.Random(seed)
    for _ in range(200):
        data = mutate(rng, rng.choice(SEEDS))
        try:
            with socket.create_connection((proc.host, proc.port), timeout=0.25) as s:
                s.sendall(data)
                if rng.random() < 0.85:
                    s.shutdown(socket.SHUT_WR)
                while s.recv(65536):
                    pass
        except (TimeoutError, ConnectionResetError, BrokenPipeError):
            pass
        except OSError as exc:
            assert proc.proc.poll() is None, f"server died on {data!r}: {exc}"
        assert proc.proc.poll() is None, f"server died on {data!r}"
    assert request(proc, b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").body == b"Hello, world!"
    assert "Fatal" not in proc.log
