"""Request bodies streamed with backpressure, response backpressure and
http.disconnect semantics."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time

import httpx

from .conftest import Reader, connect, wait_until


def report(proc, key: str, timeout: float = 5.0):
    def get():
        data = httpx.get(proc.url(f"/_report?key={key}"), timeout=timeout).json()
        return data if data["present"] else None
    return wait_until(get, timeout)["value"]


def test_20mb_upload_arrives_in_several_messages_intact(server):
    body = os.urandom(1 << 20) * 20
    r = httpx.post(server.url("/echo"), content=body, timeout=30)
    data = r.json()
    assert data["size"] == len(body)
    assert data["sha256"] == hashlib.sha256(body).hexdigest()
    assert data["messages"] > 2


def test_chunked_20mb_upload_streams(server):
    piece = os.urandom(256 << 10)

    def gen():
        for _ in range(80):
            yield piece
    r = httpx.post(server.url("/echo"), content=gen(), timeout=30)
    data = r.json()
    assert data["size"] == 80 * len(piece)
    assert data["sha256"] == hashlib.sha256(piece * 80).hexdigest()
    assert data["messages"] > 2


def send_unread_body(proc, total: int) -> int:
    """Bytes of a `total`-byte body the server takes while its app never reads."""
    sock = connect(proc)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
    sock.sendall(b"POST /noreceive?hold=5 HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Length: %d\r\n\r\n" % total)
    sock.setblocking(False)
    chunk = b"z" * (64 << 10)
    accepted = 0
    last_progress = time.monotonic()
    while accepted < total and time.monotonic() - last_progress < 1.0:
        try:
            accepted += sock.send(chunk[: total - accepted])
            last_progress = time.monotonic()
        except BlockingIOError:
            time.sleep(0.01)
    sock.close()
    return accepted


def test_request_backpressure_server_stops_reading(serve):
    proc = serve("tests.apps.http1:app", "--application-close-timeout", "1")
    accepted = send_unread_body(proc, 20 << 20)
    assert accepted < 10 << 20, f"server accepted {accepted} bytes without the app reading"


def test_body_buffer_size_flag_sets_the_request_bound(serve):
    proc = serve("tests.apps.http1:app", "--application-close-timeout", "1",
                 "--body-buffer-size", str(24 << 20))
    total = 20 << 20
    assert send_unread_body(proc, total) == total


def app_bytes_sent_to_a_slow_client(proc) -> int:
    sock = connect(proc, timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    sock.sendall(b"GET /big?mb=200 HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(1.0)
    sent = httpx.get(proc.url("/progress")).json()["bytes"]
    sock.close()
    return sent


def test_write_buffer_size_flag_sets_the_response_bound(serve):
    small = serve("tests.apps.http1:app", "--write-buffer-size", str(256 << 10))
    large = serve("tests.apps.http1:app", "--write-buffer-size", str(32 << 20))
    # The kernel's socket buffers hold a few MiB more on either side.
    assert app_bytes_sent_to_a_slow_client(small) < 8 << 20
    assert 24 << 20 <= app_bytes_sent_to_a_slow_client(large) < 64 << 20


def test_response_backpressure_send_waits_for_a_slow_client(server):
    sock = connect(server, timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    sock.sendall(b"GET /big?mb=200 HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(1.0)
    first = httpx.get(server.url("/progress")).json()
    time.sleep(0.5)
    second = httpx.get(server.url("/progress")).json()
    assert first["bytes"] > 0
    assert second["bytes"] < 20 << 20, second
    assert second["bytes"] - first["bytes"] < 4 << 20
    assert not second["done"]
    # Now read everything.
    reader = Reader(sock, timeout=30)
    head = reader.read_until(b"\r\n\r\n")
    assert b"content-length: %d" % (200 << 20) in head.lower()
    got = len(reader.buf)
    reader.buf = b""
    total = 200 << 20
    while got < total:
        data = sock.recv(1 << 20)
        assert data, f"connection closed after {got} bytes"
        got += len(data)
    assert got == total
    sock.close()
    done = httpx.get(server.url("/progress")).json()
    assert done == {"bytes": total, "done": True}


def test_receive_after_body_blocks_until_response_done_then_disconnect(server):
    r = httpx.post(server.url("/disc_response"), content=b"abc")
    assert r.content == b"part;end"
    assert report(server, "pending_while_streaming") is True
    assert report(server, "after_response") == {"type": "http.disconnect"}


def test_receive_after_body_returns_disconnect_when_client_leaves(serve):
    # --half-close-grace 0: the FIN of the close() is a disconnect at once
    # (by default the app has 5 s to start its response first, as long as
    # report()'s wait: a race).
    server = serve("tests.apps.http1:app", "--half-close-grace", "0")
    sock = connect(server)
    sock.sendall(b"POST /disc_client HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    assert report(server, "waiting") is True
    time.sleep(0.3)
    httpx_check = httpx.get(server.url("/_report?key=client_left")).json()
    assert httpx_check["present"] is False, "receive() returned while the client was there"
    sock.close()
    left = report(server, "client_left")
    assert left["msg"] == {"type": "http.disconnect"}
    assert left["waited"] >= 0.3
    assert report(server, "late_send_ok") is True


def test_http_request_messages_shape(server):
    r = httpx.post(server.url("/echo"), content=b"")
    assert r.json() == {"size": 0, "messages": 1, "body": "",
                        "sha256": hashlib.sha256(b"").hexdigest()}
    r = httpx.get(server.url("/echo"))
    assert json.loads(r.content)["messages"] == 1


def test_slow_reading_app_gets_the_whole_body(server):
    body = os.urandom(4 << 20)
    r = httpx.post(server.url("/slow_reader"), content=body, timeout=30)
    data = r.json()
    assert data["size"] == len(body)
    assert data["sha256"] == hashlib.sha256(body).hexdigest()


def test_client_leaving_mid_upload_gives_http_disconnect(server):
    sock = connect(server)
    sock.sendall(b"POST /record_body HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
                 + b"a" * 10)
    time.sleep(0.3)
    sock.close()
    assert report(server, "record_body_done") is True
    msgs = report(server, "record_body")
    assert msgs[0] == {"type": "http.request", "size": 10, "more_body": True}
    assert msgs[-1]["type"] == "http.disconnect"


def test_client_leaving_during_big_response_lets_the_app_finish(server):
    sock = connect(server, timeout=10)
    sock.sendall(b"GET /big?mb=200 HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.recv(65536)
    sock.close()
    # send() must not block forever on a gone client: the app finishes.
    wait_until(lambda: httpx.get(server.url("/progress")).json()["done"], 10)
    assert httpx.get(server.url("/hello")).status_code == 200


def test_receive_after_early_response_with_unread_body_returns_disconnect(server):
    with connect(server) as sock:
        sock.sendall(b"POST /respond_then_receive HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 100000\r\n\r\n" + b"a" * 10)
        r = Reader(sock).response()
        assert r.body == b"answered"
        assert report(server, "rtr_done", timeout=6) is True
    msgs = report(server, "rtr")
    assert msgs[-1] == "http.disconnect", msgs
