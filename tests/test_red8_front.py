"""Red team, session 8: hostile input at the front of the server, with a
real server process and raw sockets: proxy headers (--proxy-headers),
header bytes, obs-fold, odd paths, a query string at the head limit."""

from __future__ import annotations

import json
import socket

import pytest

from .conftest import Reader

APP = "tests.apps.http1:app"


def get(proc, path: bytes = b"/scope/x", headers: bytes = b""):
    with socket.create_connection((proc.host, proc.port), timeout=5) as sock:
        sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        return Reader(sock).response()


def scope_of(proc, path: bytes = b"/scope/x", headers: bytes = b"") -> dict:
    r = get(proc, path, headers)
    assert r.status == 200, r
    return json.loads(r.body)


@pytest.fixture
def proxied(serve):
    return serve(APP, "--proxy-headers")


# ---- X-Forwarded-For hops that carry a port --------------------------------


@pytest.mark.parametrize(
    "xff, client",
    [
        # Proxies that put the peer's port in the hop (IIS ARR / Azure App
        # Service: "1.2.3.4:5678"); the bracketed IPv6 form of RFC 7239.
        ("203.0.113.7:5678", ["203.0.113.7", 5678]),
        ("[2001:db8::1]:4711", ["2001:db8::1", 4711]),
        ("[2001:db8::1]", ["2001:db8::1", 0]),
        ("2001:db8::1", ["2001:db8::1", 0]),
        # The right-most untrusted hop, behind a trusted one given with a port.
        ("198.51.100.1, 203.0.113.7:80, 127.0.0.1:9000", ["203.0.113.7", 80]),
    ],
)
def test_x_forwarded_for_hop_with_a_port(proxied, xff, client):
    """A hop "host:port" gave the client host "2001:db8::1]:4711" (only the
    "[" stripped) or "203.0.113.7:5678", and a trusted proxy written with
    its port was not recognised; the Forwarded header's own rule
    (split_node) applies to X-Forwarded-For hops too."""
    scope = scope_of(proxied, headers=f"X-Forwarded-For: {xff}\r\n".encode())
    assert scope["client"] == client


def test_x_forwarded_port_still_wins_over_the_hop_port(proxied):
    scope = scope_of(
        proxied, headers=b"X-Forwarded-For: 203.0.113.7:5678\r\nX-Forwarded-Port: 8443\r\n"
    )
    assert scope["client"] == ["203.0.113.7", 8443]


@pytest.mark.parametrize(
    "headers, client, scheme",
    [
        # 2000 hops: the right-most untrusted one.
        (
            "X-Forwarded-For: " + ", ".join(f"10.0.{i // 250}.{i % 250}" for i in range(2000)),
            ["10.0.7.249", 0],
            "http",
        ),
        ("X-Forwarded-For: ", None, "http"),
        ("X-Forwarded-For: ,, , ,", None, "http"),
        ("X-Forwarded-Proto: ", None, "http"),
        ("X-Forwarded-Proto: javascript", None, "http"),
        ("X-Forwarded-Proto: HTTPS", None, "https"),
        ("X-Real-IP: 198.51.100.9", None, "http"),  # Daphne ignores it too
        ("Forwarded: ;;;;", None, "http"),
        ("Forwarded: for=unknown", None, "http"),
    ],
)
def test_hostile_proxy_headers_never_break_the_request(proxied, headers, client, scheme):
    scope = scope_of(proxied, headers=f"{headers}\r\n".encode("latin-1"))
    if client is None:
        assert scope["client"][0] == "127.0.0.1" and scope["client"][1] > 0
    else:
        assert scope["client"] == client
    assert scope["scheme"] == scheme


def test_proxy_header_with_high_bytes_is_passed_as_latin1(proxied):
    scope = scope_of(proxied, headers=b"X-Forwarded-For: garbage\xff\xfe\r\n")
    assert scope["client"] == ["garbage\xff\xfe", 0]


# ---- header bytes, obs-fold, paths ------------------------------------------


def test_header_value_bytes_0x80_to_0xff_reach_the_app(server):
    scope = scope_of(server, headers=b"X-H: caf\xe9 \x80\xff\r\n")
    assert [b"x-h", b"caf\xe9 \x80\xff"] in [
        [n["__bytes__"].encode("latin-1"), v["__bytes__"].encode("latin-1")]
        for n, v in scope["headers"]
    ]


@pytest.mark.parametrize(
    "header",
    [
        b"X-H: a\r\n  folded\r\n",  # obs-fold: RFC 9112 5.2 allows a 400
        b"X-H: a\x00b\r\n",
        b"X-H: a\x7fb\r\n",
        b"X-H: a\x85b\r\n",  # NEL: Daphne 4.2.3 answers 400 too
        b"X\xffH: v\r\n",
        b"X-H : v\r\n",
    ],
)
def test_bad_header_bytes_get_400_and_the_server_goes_on(server, header):
    assert get(server, headers=header).status == 400
    assert get(server, b"/").status == 200


@pytest.mark.parametrize(
    "raw, path",
    [
        (b"/scope/%00", "/scope/\x00"),
        # Invalid UTF-8 after unquoting: replacement characters, as
        # Daphne's and uvicorn's urllib.parse.unquote give.
        (b"/scope/a%ff%fe", "/scope/a\ufffd\ufffd"),
        (b"/scope/%c3%a9", "/scope/\u00e9"),
        (b"/scope/%2F%2e%2e", "/scope//.."),
        (b"/scope/%", "/scope/%"),
        (b"/scope/%zz", "/scope/%zz"),
    ],
)
def test_odd_paths_decode_like_daphne(server, raw, path):
    scope = scope_of(server, raw)
    assert scope["path"] == path
    assert scope["raw_path"] == {"__bytes__": raw.decode("latin-1")}


def test_raw_high_bytes_in_the_path_get_400(server):
    assert get(server, b"/scope/\xff\xfe").status == 400
    assert get(server, b"/").status == 200


def test_query_string_just_under_and_over_the_head_limit(server):
    scope = scope_of(server, b"/scope/x?" + b"q" * 60000)
    assert len(scope["query_string"]["__bytes__"]) == 60000
    r = get(server, b"/scope/x?" + b"q" * 70000)
    assert r.status in (414, 431)
    assert get(server, b"/").status == 200


# ---- Daphne's -e endpoint strings, as Twisted reads them --------------------


@pytest.mark.parametrize(
    "text, host, port",
    [
        # Twisted fills positional arguments in its parser's order:
        # tcp (port, interface, backlog), tcp6 (port, backlog, interface).
        ("tcp:8000:127.0.0.1", "127.0.0.1", 8000),
        ("tcp:8000:127.0.0.1:50", "127.0.0.1", 8000),
        ("tcp:8000:interface=127.0.0.1:backlog=10", "127.0.0.1", 8000),
        ("tcp6:8000:50:\\:\\:1", "::1", 8000),
        ("tcp6:port=8000:interface=\\:\\:1", "::1", 8000),
        ("ssl:8443:k.pem:c.pem:interface=127.0.0.1", "127.0.0.1", 8443),
    ],
)
def test_endpoint_positional_arguments_follow_twisted(text, host, port):
    """`tcp:8000:127.0.0.1` is Twisted's (Daphne's) interface 127.0.0.1;
    the second positional was ignored and the server listened on every
    interface (0.0.0.0)."""
    from cdaphne.config import parse_endpoint

    bind = parse_endpoint(text)
    assert (bind.host, bind.port) == (host, port)


@pytest.mark.parametrize(
    "text",
    [
        "tcp:8000:interfce=127.0.0.1",  # a typo: Twisted refuses it
        "tcp:0:unknown=1",
        "tcp:8000:127.0.0.1:50:extra",  # too many positionals
        "tcp:8000:interface=127.0.0.1:127.0.0.2",  # a positional after a keyword's slot
        "tcp6:8000:inteface=\\:\\:1",
        "unix:/tmp/x.sock:mod=600",
        "fd:fileno=3:domian=INET",
    ],
)
def test_endpoint_unknown_or_extra_arguments_are_refused(text):
    """Twisted raises TypeError for these (Daphne does not start); they
    were ignored, so `interfce=127.0.0.1` listened on every interface."""
    from cdaphne.config import ConfigError, parse_endpoint

    with pytest.raises(ConfigError):
        parse_endpoint(text)


def test_endpoint_with_a_mistyped_interface_does_not_start(tmp_path):
    import subprocess
    import sys

    from .serverproc import ROOT

    r = subprocess.run(
        [sys.executable, "-m", "cdaphne", "-e", "tcp:0:interfce=127.0.0.1", APP],
        cwd=ROOT,
        capture_output=True,
        timeout=30,
        text=True,
    )
    assert r.returncode != 0
    assert "interfce" in r.stderr


@pytest.mark.parametrize(
    "forwarded",
    [
        'for="',  # unterminated: the client host was '"'
        'for="203.0.113.9',
        'for="203.0.113.9\\"',  # the closing quote escaped
        'for="203.0.113.9"x',
        'for=203.0.113.9"',
        'for=""',  # an empty node: the client host was ''
        'for="203.0.113.9, for=198.51.100.1;proto=https',
    ],
)
def test_an_invalid_forwarded_node_keeps_the_peer_address(proxied, forwarded):
    """RFC 7239 4: a for= node is a token or a quoted-string; a malformed
    one (an unterminated quote gave the client host '"') is ignored, as
    "unknown" is: the peer address is kept."""
    scope = scope_of(proxied, headers=f"Forwarded: {forwarded}\r\n".encode("latin-1"))
    assert scope["client"][0] == "127.0.0.1" and scope["client"][1] > 0
    assert scope["scheme"] == "http"
    scope = scope_of(proxied, headers=b'Forwarded: for="203.0.113.9:81"\r\n')
    assert scope["client"] == ["203.0.113.9", 81]
