"""HTTP/1.1 framing against a real server: keep-alive, pipelining, chunked
bodies both ways, Content-Length, HEAD, HTTP/1.0, Connection: close,
100-continue, Date and Server headers."""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import time

import httpx
import pytest

from .conftest import Reader, connect, is_closed, recv_all, request


def test_keep_alive_serves_two_requests_on_one_connection(server):
    with connect(server) as sock:
        reader = Reader(sock)
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        first = reader.response()
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        second = reader.response()
    assert first.status == second.status == 200
    assert first.body == second.body == b"Hello, world!"
    assert first.header("connection") is None


def test_keep_alive_with_httpx_reuses_the_connection(server):
    ports = set()
    with httpx.Client() as client:
        for _ in range(3):
            r = client.get(server.url("/scope"))
            ports.add(r.json()["client"][1])
    assert len(ports) == 1


def test_pipelined_requests_are_answered_strictly_in_order(server):
    reqs = []
    for i in range(10):
        delay = "0.5" if i == 0 else "0"
        reqs.append(f"GET /slow?n={i}&delay={delay} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    with connect(server) as sock:
        sock.sendall(b"".join(reqs))
        reader = Reader(sock)
        bodies = [reader.response().body for _ in range(10)]
    assert bodies == [str(i).encode() for i in range(10)]


def test_pipelined_posts_with_bodies_keep_their_bodies(server):
    reqs = b"".join(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(b), b)
        for b in (b"alpha", b"", b"gamma-gamma"))
    with connect(server) as sock:
        sock.sendall(reqs)
        reader = Reader(sock)
        got = [json.loads(reader.response().body)["body"] for _ in range(3)]
    assert got == ["alpha", "", "gamma-gamma"]


def test_chunked_request_body_is_decoded(server):
    body = (b"5\r\nhello\r\n"
            b"1;ext=1\r\n \r\n"
            b"5\r\nworld\r\n"
            b"0\r\n\r\n")
    r = request(server, b"POST /echo HTTP/1.1\r\nHost: x\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n" + body)
    assert r.status == 200
    assert json.loads(r.body)["body"] == "hello world"


def test_chunked_request_body_then_next_request_on_same_connection(server):
    with connect(server) as sock:
        reader = Reader(sock)
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n0\r\n\r\n"
                     b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        assert json.loads(reader.response().body)["body"] == "abc"
        assert reader.response().body == b"Hello, world!"


def test_streamed_response_uses_chunked_encoding(server):
    r = request(server, b"GET /stream?n=4&size=3 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.status == 200
    assert r.chunked
    assert r.header("content-length") is None
    assert r.body == b"AAABBBCCCDDD"


def test_app_given_content_length_is_kept_and_not_chunked(server):
    r = request(server, b"GET /cl HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.header_all("content-length") == ["10"]
    assert r.header("transfer-encoding") is None
    assert r.body == b"0123456789"


def test_single_body_gets_server_computed_content_length(server):
    r = request(server, b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.header_all("content-length") == ["13"]
    assert not r.chunked
    assert r.body == b"Hello, world!"


def test_empty_body_gets_content_length_zero(server):
    r = request(server, b"GET /empty HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.header("content-length") == "0"
    assert r.body == b""


@pytest.mark.parametrize("status", [204, 304])
def test_no_content_statuses_have_no_body_and_no_length(server, status):
    with connect(server) as sock:
        reader = Reader(sock)
        sock.sendall(b"GET /empty?status=%d HTTP/1.1\r\nHost: x\r\n\r\n" % status)
        r = reader.response()
        assert r.status == status
        assert r.header("transfer-encoding") is None
        # The connection stays usable: nothing stray after the head.
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reader.response().body == b"Hello, world!"


def test_head_sends_headers_but_no_body(server):
    with connect(server) as sock:
        reader = Reader(sock)
        sock.sendall(b"HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        r = reader.response(head_request=True)
        assert r.status == 200
        assert r.header("content-type") == "text/plain"
        assert r.header("content-length") == "13"
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        nxt = reader.response()
        # Any body bytes from the HEAD response would corrupt this parse.
        assert nxt.status == 200 and nxt.body == b"Hello, world!"


def test_head_of_a_streamed_response_has_no_chunks(server):
    with connect(server) as sock:
        reader = Reader(sock)
        sock.sendall(b"HEAD /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        reader.response(head_request=True)
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reader.response().body == b"Hello, world!"


def test_http10_streamed_response_is_not_chunked_and_closes(server):
    with connect(server) as sock:
        sock.sendall(b"GET /stream?n=3&size=2 HTTP/1.0\r\n\r\n")
        raw = recv_all(sock)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.0 200")
    assert b"chunked" not in head.lower()
    assert body == b"AABBCC"


def test_http10_closes_without_keep_alive(server):
    with connect(server) as sock:
        sock.sendall(b"GET /hello HTTP/1.0\r\n\r\n")
        r = Reader(sock).response()
        assert r.body == b"Hello, world!"
        assert is_closed(sock)


def test_http10_keep_alive_is_honoured(server):
    with connect(server) as sock:
        reader = Reader(sock)
        sock.sendall(b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        r = reader.response()
        assert r.body == b"Hello, world!"
        assert r.header("connection").lower() == "keep-alive"
        assert not is_closed(sock, 0.3)
        sock.sendall(b"GET /scope HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
        r2 = reader.response()
        assert json.loads(r2.body)["http_version"] == "1.0"


@pytest.mark.parametrize("value", [b"close", b"Close", b"CLOSE", b"cLoSe"])
def test_connection_close_from_client_in_any_case(server, value):
    with connect(server) as sock:
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: " + value + b"\r\n\r\n")
        r = Reader(sock).response()
        assert r.body == b"Hello, world!"
        assert r.header("connection").lower() == "close"
        assert is_closed(sock)


@pytest.mark.parametrize("value", ["close", "Close"])
def test_connection_close_from_app_closes(server, value):
    with connect(server) as sock:
        sock.sendall(f"GET /headers?close={value} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        r = Reader(sock).response()
        assert r.status == 200
        assert is_closed(sock)


def test_expect_100_continue_sent_on_first_receive(server):
    with connect(server) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        reader = Reader(sock)
        interim = reader.read_until(b"\r\n\r\n")
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        r = reader.response()
    assert json.loads(r.body)["body"] == "hello"


def test_expect_100_continue_not_sent_when_app_answers_without_reading(server):
    with connect(server) as sock:
        sock.sendall(b"POST /respond_first HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        reader = Reader(sock)
        r = reader.response()
        assert r.status == 200 and r.body == b"early"
        time.sleep(0.2)
        sock.settimeout(0.3)
        try:
            rest = sock.recv(100)
        except TimeoutError:
            rest = b""
        assert b"100 Continue" not in rest


def test_expect_100_continue_never_after_the_response_started(server):
    with connect(server) as sock:
        sock.sendall(b"POST /late_receive HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        reader = Reader(sock)
        head = reader.read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        sock.sendall(b"hello")
        rest = reader.read_until(b"0\r\n\r\n")
    assert b"100 Continue" not in rest
    assert b"head;" in rest and b"hello" in rest


def test_date_and_server_headers(server):
    r = httpx.get(server.url("/hello"))
    assert r.headers["server"] == "cdaphne"
    date = email.utils.parsedate_to_datetime(r.headers["date"])
    assert abs(date.timestamp() - time.time()) < 5
    assert r.headers["date"].endswith(" GMT")


def test_app_given_server_and_date_are_not_duplicated(server):
    r = request(server, b"GET /headers?server=mine&date=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.header_all("server") == ["mine"]
    assert r.header_all("date") == ["Thu, 01 Jan 1970 00:00:00 GMT"]


def test_response_header_order_and_duplicates_kept(server):
    r = request(server, b"GET /headers HTTP/1.1\r\nHost: x\r\n\r\n")
    names = [k.lower() for k, _ in r.headers]
    assert r.header_all("set-cookie") == ["a=1", "b=2"]
    assert names.index("x-one") < names.index("set-cookie")


def test_no_server_name_flag(serve):
    proc = serve("tests.apps.http1:app", "--no-server-name")
    r = httpx.get(proc.url("/hello"))
    assert "server" not in r.headers
    assert "date" in r.headers
    bad = request(proc, b"G@T / HTTP/1.1\r\n\r\n")
    assert bad.status == 400 and bad.header("server") is None


def test_server_name_flag(serve):
    proc = serve("tests.apps.http1:app", "-s", "MyServer/1.0")
    r = httpx.get(proc.url("/hello"))
    assert r.headers["server"] == "MyServer/1.0"


@pytest.mark.parametrize(
    "flags, want",
    [
        (("--no-server-name", "-s", "MyServer/1.0"), "MyServer/1.0"),
        (("-s", "MyServer/1.0", "--no-server-name"), None),
        (("--no-server-header", "--server-name", "x"), "x"),
    ],
)
def test_server_name_flags_last_one_wins(serve, flags, want):
    """-s and --no-server-name together: Daphne's two flags set one value,
    so the last one given wins (uvicorn's --server-header/--no-server-header
    likewise).  --no-server-name won wherever it stood."""
    proc = serve("tests.apps.http1:app", *flags)
    r = httpx.get(proc.url("/hello"))
    assert r.headers.get("server") == want


def test_head_sent_in_tiny_pieces_is_parsed(server):
    import socket as _socket
    head = (b"GET /scope HTTP/1.1\r\nHost: x\r\nX-Long-Value: one two  three\r\n"
            b"X-Other: v\r\n\r\n")
    with connect(server) as sock:
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        for i in range(0, len(head), 3):
            sock.sendall(head[i:i + 3])
            time.sleep(0.005)
        r = Reader(sock).response()
    scope = json.loads(r.body)
    assert [{"__bytes__": "x-long-value"}, {"__bytes__": "one two  three"}] in scope["headers"]
    assert [{"__bytes__": "x-other"}, {"__bytes__": "v"}] in scope["headers"]


def test_short_body_for_content_length_closes_the_connection(server):
    with connect(server) as sock:
        sock.sendall(b"GET /short_cl HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = recv_all(sock)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-length: 10" in head.lower()
    assert body == b"01234"


def test_app_named_chunked_encoding_is_framed_once(server):
    r = request(server, b"GET /app_chunked HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.chunked
    assert r.header_all("transfer-encoding") == ["chunked"]
    assert r.body == b"abcdef"


def test_http10_large_streamed_body_is_not_truncated_at_close(server):
    with connect(server, timeout=10) as sock:
        sock.sendall(b"GET /stream?n=200&size=65536 HTTP/1.0\r\n\r\n")
        raw = recv_all(sock, timeout=10)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"chunked" not in head.lower()
    assert len(body) == 200 * 65536


def test_connection_close_large_response_is_not_truncated(server):
    with connect(server, timeout=10) as sock:
        sock.sendall(b"GET /big?mb=16 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        time.sleep(0.5)  # Let the server queue everything and start closing.
        raw = recv_all(sock, timeout=10)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert len(body) == 16 << 20


def test_absolute_form_request_target(server):
    r = request(server, b"GET http://example.com/scope?a=b HTTP/1.1\r\nHost: example.com\r\n\r\n")
    scope = json.loads(r.body)
    assert scope["path"] == "/scope"
    assert scope["raw_path"] == {"__bytes__": "/scope"}
    assert scope["query_string"] == {"__bytes__": "a=b"}


def test_many_concurrent_connections_do_not_mix_up(server):
    import concurrent.futures

    def one(i):
        return request(server, b"GET /slow?n=%d&delay=0.2 HTTP/1.1\r\nHost: x\r\n\r\n" % i,
                       timeout=10).body
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        got = list(pool.map(one, range(50)))
    assert got == [str(i).encode() for i in range(50)]


@pytest.mark.parametrize("first", [
    b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /hello HTTP/1.0\r\n\r\n",
])
def test_request_pipelined_after_a_closing_one_is_not_answered(server, first):
    with connect(server) as sock:
        sock.sendall(first + b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = recv_all(sock)
    assert raw.count(b"HTTP/1.") == 1, raw


def test_error_responses_carry_date_and_server(server):
    r = request(server, b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.status == 400
    assert r.header("date")
    assert r.header("server") == "cdaphne"


def test_no_100_continue_for_http10_clients(server):
    with connect(server) as sock:
        sock.sendall(b"POST /echo HTTP/1.0\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        time.sleep(0.3)
        sock.sendall(b"hello")
        raw = recv_all(sock)
    assert b"100 Continue" not in raw
    assert raw.startswith(b"HTTP/1.1 200")
    assert raw.endswith(b'"body": "hello"}')


def test_pipelined_large_bodies_behind_a_slow_request(server):
    bodies = [os.urandom(300_000) for _ in range(3)]
    reqs = [b"GET /slow?n=first&delay=0.3 HTTP/1.1\r\nHost: x\r\n\r\n"]
    reqs += [b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(b), b)
             for b in bodies]
    with connect(server, timeout=10) as sock:
        sock.sendall(b"".join(reqs))
        reader = Reader(sock, timeout=10)
        assert reader.response().body == b"first"
        for b in bodies:
            data = json.loads(reader.response().body)
            assert data["size"] == len(b)
            assert data["sha256"] == hashlib.sha256(b).hexdigest()


def test_hundred_pipelined_mixed_requests(server):
    reqs, expected = [], []
    for i in range(100):
        if i % 3 == 0:
            body = os.urandom(i * 37)
            reqs.append(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                        % (len(body), body))
            expected.append(("echo", hashlib.sha256(body).hexdigest()))
        elif i % 3 == 1:
            reqs.append(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"3\r\n%03d\r\n0\r\n\r\n" % i)
            expected.append(("echo", hashlib.sha256(b"%03d" % i).hexdigest()))
        else:
            reqs.append(b"GET /slow?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
            expected.append(("slow", str(i).encode()))
    with connect(server, timeout=10) as sock:
        sock.sendall(b"".join(reqs))
        reader = Reader(sock, timeout=10)
        for kind, want in expected:
            body = reader.response().body
            if kind == "echo":
                assert json.loads(body)["sha256"] == want
            else:
                assert body == want


def test_asterisk_form_options_reaches_the_app(server):
    r = request(server, b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.status == 404  # The app has no route for "*": it was asked.
    assert request(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").status == 200


def test_chunked_request_with_trailers(server):
    with connect(server) as sock:
        reader = Reader(sock)
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"4\r\nwxyz\r\n0\r\nX-Checksum: 1\r\nX-Other: 2\r\n\r\n"
                     b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        assert json.loads(reader.response().body)["body"] == "wxyz"
        assert reader.response().body == b"Hello, world!"
