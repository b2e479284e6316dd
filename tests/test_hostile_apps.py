"""Hostile and buggy apps against the response writer, over raw sockets:
what an app puts in http.response.start must never reach the wire as a
head that frames differently for the client than for us (response
splitting and smuggling through a proxy: RFC 9112 6.1-6.3)."""

from __future__ import annotations

import json

import pytest

from .conftest import Reader, connect, is_closed, recv_all, wait_until

APP = "tests.apps.hostile:app"


@pytest.fixture
def server(serve):
    return serve(APP)


def post(spec: dict, version: bytes = b"1.1") -> bytes:
    body = json.dumps(spec).encode()
    return b"POST / HTTP/%s\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (version, len(body), body)


def answer(server, spec: dict, version: bytes = b"1.1"):
    """The response to one request, and whether the server then closed."""
    with connect(server) as sock:
        sock.sendall(post(spec, version))
        r = Reader(sock).response()
        return r, is_closed(sock, 1.0)


REFUSED = {
    # A proxy frames by the chunks, the client by the length, or each
    # picks another length: the body becomes the next response.
    "content_length_and_chunked": [("content-length", "5"), ("transfer-encoding", "chunked")],
    "chunked_and_content_length": [("transfer-encoding", "chunked"), ("content-length", "5")],
    "two_different_content_lengths": [("content-length", "5"), ("content-length", "50")],
    "content_length_with_sign": [("content-length", "+5")],
    "content_length_with_vtab": [("content-length", "\x0b5")],
    # We frame in chunks whatever the app names: gzip alone would tell
    # the client to read to the close, and then see our chunk lines.
    "transfer_encoding_gzip": [("transfer-encoding", "gzip")],
    "chunked_twice": [("transfer-encoding", "chunked, chunked")],
    "two_transfer_encodings": [("transfer-encoding", "gzip"), ("transfer-encoding", "chunked")],
    # Control characters other than HTAB in a value (uvicorn refuses
    # them too).
    "value_with_soh": [("x-a", "1\x01")],
    "value_with_del": [("x-a", "1\x7f")],
    "value_with_esc": [("x-a", "\x1b[31m")],
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_app_header_that_would_frame_the_body_twice_gives_500(server, name):
    r, closed = answer(server, {"headers": REFUSED[name]})
    assert r.status == 500, r
    assert r.body == b"Internal Server Error"
    assert closed
    wait_until(lambda: "ValueError" in server.log)


@pytest.mark.parametrize("status", [100, 101, 103, 199])
def test_app_interim_status_as_the_response_gives_500(server, status):
    # 101 would tell the client the connection switched protocols; 100
    # would leave it waiting for a final answer.
    r, closed = answer(server, {"status": status})
    assert r.status == 500, r
    assert closed
    wait_until(lambda: f"invalid status {status}" in server.log)


def test_app_repeating_the_same_content_length_sends_it_once(server):
    r, _ = answer(server, {"headers": [("content-length", "5"), ("Content-Length", "5")]})
    assert r.status == 200
    assert r.header_all("content-length") == ["5"]
    assert r.body == b"hello"


def test_app_content_length_with_whitespace_is_kept(server):
    r, _ = answer(server, {"headers": [("content-length", " 5\t")]})
    assert (r.status, r.body) == (200, b"hello")


@pytest.mark.parametrize("te", ["chunked", "Chunked", "gzip, chunked", "gzip,chunked "])
def test_app_transfer_encoding_ending_in_chunked_is_framed_once(server, te):
    with connect(server) as sock:
        reader = Reader(sock)
        sock.sendall(post({"headers": [("transfer-encoding", te)], "body": ["abc", "def"]}))
        r = reader.response()
        assert r.header_all("transfer-encoding") == [te.strip()]
        assert r.body == b"abcdef"
        # The connection is still in step.
        sock.sendall(post({}))
        assert reader.response().body == b"hello"


def test_app_transfer_encoding_is_not_sent_to_an_http10_client(server):
    # RFC 9112 6.1: no transfer coding to HTTP/1.0; the close ends the body.
    with connect(server) as sock:
        sock.sendall(
            post(
                {"headers": [("transfer-encoding", "chunked")], "body": ["abc", "def"]},
                version=b"1.0",
            )
        )
        raw = recv_all(sock)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding" not in head.lower()
    assert b"connection: close" in head.lower()
    assert body == b"abcdef"


def test_receive_and_send_kept_past_the_response_are_harmless(server):
    # An app keeps the callables of a request whose connection is gone and
    # calls them much later: no crash (the suite runs under ASan too), the
    # disconnect is delivered once, the sends are ignored as Daphne does.
    with connect(server) as sock:
        sock.sendall(post({"keep": True}))
        assert Reader(sock).response().body == b"hello"
    with connect(server) as sock:
        sock.sendall(b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n")
        r = Reader(sock).response()
    assert r.body.decode().split("\n") == [
        "{'type': 'http.disconnect'}",
        "RuntimeError",
        "RuntimeError",
        "TimeoutError",
    ], r.body


def test_receive_and_send_called_from_another_thread_run_on_the_loop(serve):
    # asgiref's async_to_sync(send)(msg), in every Channels sync consumer,
    # calls send() in its thread and awaits the result on the loop.  The C
    # send() did its work (libuv writes, timers) when called, in that
    # thread, racing with the loop: a send() never awaited went out too.
    # Now the work happens when it is awaited, on the loop's thread only.
    proc = serve("tests.apps.threadsend:app")
    with connect(proc) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        r = Reader(sock).response()
    assert r.status == 200
    assert r.body == (b"on the loop;async_to_sync;"
                      b"send:send() awaited outside the server's event loop thread|"
                      b"receive:receive() awaited outside the server's event loop thread")
