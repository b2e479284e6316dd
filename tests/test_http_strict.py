"""Strict HTTP/1.1 request heads, byte-exact over raw sockets: Host rules,
HTTP/1.0 with Transfer-Encoding, empty field names, unsupported versions
(RFC 9112 3.2, 6.1, 5.1; RFC 9110 15.6.6), and the head limits counted as
the head arrives on the wire (--max-header-size, --max-header-count)."""

from __future__ import annotations

import json
import re
import select

import pytest

from .conftest import Reader, connect, is_closed, request

APP = "tests.apps.http1:app"
DATE = re.compile(rb"\r\ndate: [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT\r\n")


def exact(status: int, reason: str, body: str) -> bytes:
    """The server's own error response, with its date line taken out."""
    return (b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nserver: cdaphne\r\nconnection: close\r\n\r\n%s"
            % (status, reason.encode(), len(body), body.encode()))


def refused(proc, data: bytes) -> bytes:
    """Sends data, reads to EOF; returns the reply without its date line.
    The connection must be closed by the server."""
    with connect(proc) as sock:
        sock.sendall(data)
        reader = Reader(sock)
        raw = reader.read_until(b"\r\n\r\n")
        raw += reader.read_to_eof()
    assert len(DATE.findall(raw)) == 1, raw
    return DATE.sub(b"\r\n", raw)


def still_serving(proc) -> None:
    r = request(proc, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (r.status, r.body) == (200, b"Hello, world!")


@pytest.fixture
def server(serve):
    return serve(APP)


BAD_REQUEST = exact(400, "Bad Request", "Bad Request")

REFUSED_400 = {
    "http11_without_host": b"GET / HTTP/1.1\r\n\r\n",
    "http11_without_host_with_other_headers": b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n",
    "http11_two_hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "http11_two_hosts_same_value": b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
    "http10_two_hosts": b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
    "http10_transfer_encoding": b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
                                b"3\r\nabc\r\n0\r\n\r\n",
    "http10_transfer_encoding_with_host": b"POST /echo HTTP/1.0\r\nHost: x\r\n"
                                          b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "empty_field_name": b"GET / HTTP/1.1\r\nHost: x\r\n: x\r\n\r\n",
    "empty_field_name_first": b"GET / HTTP/1.1\r\n: x\r\nHost: x\r\n\r\n",
    "empty_field_name_empty_value": b"GET / HTTP/1.1\r\nHost: x\r\n:\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(REFUSED_400))
def test_request_breaking_rfc9112_gets_400_and_close(server, name):
    assert refused(server, REFUSED_400[name]) == BAD_REQUEST
    still_serving(server)


NOT_IMPLEMENTED = exact(501, "Not Implemented", "Not Implemented")

# RFC 9112 6.1: a transfer coding the server does not understand gets 501.
# llhttp frames "gzip, chunked" as chunked: the app would get the body still
# gzip-coded, as if it were the content.
POST = b"POST /echo HTTP/1.1\r\nHost: x\r\n"
REFUSED_501 = {
    "gzip_then_chunked": POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n"
                                b"3\r\nabc\r\n0\r\n\r\n",
    "gzip_line_then_chunked_line": POST + b"Transfer-Encoding: gzip\r\n"
                                          b"Transfer-Encoding: chunked\r\n\r\n"
                                          b"3\r\nabc\r\n0\r\n\r\n",
    "identity_then_chunked": POST + b"Transfer-Encoding: identity, chunked\r\n\r\n"
                                    b"0\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(REFUSED_501))
def test_transfer_coding_other_than_chunked_gets_501_and_close(server, name):
    assert refused(server, REFUSED_501[name]) == NOT_IMPLEMENTED
    still_serving(server)


def test_chunked_named_on_two_lines_gets_400(server):
    data = POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert refused(server, data) == BAD_REQUEST


def test_chunked_in_any_case_is_served(server):
    r = request(server, POST + b"Transfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert r.status == 200 and b"abc" in r.body


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/0.9"])
def test_request_line_with_major_version_other_than_1_gets_505(server, version):
    reply = refused(server, b"GET / " + version + b"\r\nHost: x\r\n\r\n")
    assert reply == exact(505, "HTTP Version Not Supported", "HTTP Version Not Supported")
    still_serving(server)


def test_http10_without_host_is_served(server):
    r = request(server, b"GET /scope/x HTTP/1.0\r\n\r\n")
    assert r.status == 200
    scope = json.loads(r.body)
    assert scope["http_version"] == "1.0"
    assert scope["headers"] == []


def test_http11_with_one_host_is_served(server):
    r = request(server, b"GET /scope/x HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert r.status == 200
    scope = json.loads(r.body)
    assert scope["http_version"] == "1.1"
    assert scope["headers"] == [[{"__bytes__": "host"}, {"__bytes__": "example.com"}]]


# ---- head limits -------------------------------------------------------------

HEADERS_TOO_LARGE = exact(431, "Request Header Fields Too Large",
                          "Request Header Fields Too Large")


def head_with(lines: int, line: bytes = b"a: b\r\n") -> bytes:
    return b"GET /scope/x HTTP/1.1\r\nHost: x\r\n" + line * lines + b"\r\n"


def test_header_size_counts_every_byte_of_the_head(serve):
    # 150 lines "a: b" are 900 bytes on the wire but only 300 bytes of
    # names and values: the wire is what counts.
    proc = serve(APP, "--max-header-size", "600", "--max-header-count", "0")
    assert len(head_with(90)) < 600
    r = request(proc, head_with(90))
    assert r.status == 200
    assert len(json.loads(r.body)["headers"]) == 91
    assert refused(proc, head_with(150)) == HEADERS_TOO_LARGE
    # Whitespace and separators count as well.
    assert refused(proc, head_with(3, b"a:" + b" " * 200 + b"b\r\n")) == HEADERS_TOO_LARGE
    still_serving(proc)


def test_header_size_counts_a_head_that_arrives_in_pieces(serve):
    proc = serve(APP, "--max-header-size", "600", "--max-header-count", "0")
    data = head_with(150)
    with connect(proc) as sock:
        for i in range(0, len(data), 7):
            sock.sendall(data[i:i + 7])
            if select.select([sock], [], [], 0.01)[0]:
                break
        raw = Reader(sock).read_until(b"\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 431 ")
        assert is_closed(sock)


def send_until_answered(proc, data: bytes, piece: int = 4096) -> bytes:
    """Sends data in pieces, stopping once the server answers; returns
    the response head."""
    with connect(proc) as sock:
        for i in range(0, len(data), piece):
            try:
                sock.sendall(data[i:i + piece])
            except (BrokenPipeError, ConnectionResetError):
                break
            if select.select([sock], [], [], 0)[0]:
                break
        return Reader(sock).read_until(b"\r\n\r\n")


def test_60000_empty_headers_get_431(server):
    # 240 KB on the wire, which used to cost ~7 MiB of Python objects.
    head = send_until_answered(server, head_with(60000, b"a:\r\n"))
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    still_serving(server)


def test_100_header_fields_pass_and_101_get_431(server):
    # Host is one of the 100.
    r = request(server, head_with(99, b"x-h: v\r\n"))
    assert r.status == 200
    assert len(json.loads(r.body)["headers"]) == 100
    assert refused(server, head_with(100, b"x-h: v\r\n")) == HEADERS_TOO_LARGE
    still_serving(server)


def test_max_header_count_flag(serve):
    proc = serve(APP, "--max-header-count", "5")
    assert request(proc, head_with(4)).status == 200
    assert refused(proc, head_with(5)) == HEADERS_TOO_LARGE
    still_serving(proc)


def test_trailers_count_towards_the_header_fields(serve):
    proc = serve(APP, "--max-header-count", "5")
    body = b"3\r\nabc\r\n0\r\n" + b"t: 1\r\n" * 10 + b"\r\n"
    with connect(proc) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + body)
        raw = Reader(sock).read_to_eof()
    # The head is fine; with the trailers the request has 13 fields.
    assert raw.startswith(b"HTTP/1.1 431 ")
    still_serving(proc)


CHUNKED = POST + b"Transfer-Encoding: chunked\r\n\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("size_line", [b"5 ;a=b", b"5\t;a=b", b"5; a=b", b"5 ; a=b",
                                       b"5;a = b", b"5;a= b", b"5;a=b "])
def test_whitespace_around_chunk_extension_separators_gets_400(server, size_line):
    """RFC 9112's chunk-ext allows BWS around ";" and "=" (which senders
    must not send).  Refused, as llhttp 8 and 9 do even in lenient mode
    (uvicorn with httptools, Node) and h11 and Twisted (Daphne) do before
    the ";"; Daphne accepts it after.  One answer, and nothing after it is
    read as a request."""
    data = CHUNKED + size_line + b"\r\nhello\r\n0\r\n\r\n" + SMUGGLED
    assert refused(server, data) == BAD_REQUEST
    still_serving(server)


@pytest.mark.parametrize("size_line", [b"5;a=b", b'5;a="b c"', b"5;a;b=c"])
def test_chunk_extensions_without_whitespace_keep_the_body_boundary(server, size_line):
    with connect(server) as sock:
        sock.sendall(CHUNKED + size_line + b"\r\nhello\r\n0\r\n\r\n"
                     + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = Reader(sock)
        first, second = reader.response(), reader.response()
    assert first.status == 200 and json.loads(first.body)["size"] == 5
    assert (second.status, second.body) == (200, b"Hello, world!")
