"""--proxy-headers: X-Forwarded-*, Forwarded (RFC 7239), trusted peers only."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys

import httpx
import pytest

from cdaphne.config import Config
from cdaphne.proxy import ProxyHeadersMiddleware, parse_forwarded

from .conftest import Reader
from .serverproc import ServerProcess

APP = "tests.apps.http1:app"


def scope_via(proc, headers: dict[str, str], source: str = "127.0.0.1") -> dict:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection((proc.host, proc.port), timeout=5,
                                  source_address=(source, 0)) as sock:
        sock.sendall(f"GET /scope HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode("latin-1"))
        r = Reader(sock).response()
    assert r.status == 200, r
    return json.loads(r.body)


@pytest.fixture
def proxied(serve):
    return serve(APP, "--proxy-headers")


XFF = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https",
       "X-Forwarded-Port": "8443"}


def test_trusted_peer_x_forwarded_headers(proxied):
    scope = scope_via(proxied, XFF)
    assert scope["client"] == ["203.0.113.7", 8443]
    assert scope["scheme"] == "https"


def test_trusted_peer_without_port_header_gets_port_zero(proxied):
    scope = scope_via(proxied, {"X-Forwarded-For": "203.0.113.7"})
    assert scope["client"] == ["203.0.113.7", 0]
    assert scope["scheme"] == "http"


def test_untrusted_peer_headers_ignored(proxied):
    scope = scope_via(proxied, XFF, source="127.0.0.2")
    assert scope["client"][0] == "127.0.0.2"
    assert scope["scheme"] == "http"


def test_untrusted_peer_with_httpx_local_address(proxied):
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(transport=transport) as client:
        scope = client.get(proxied.url("/scope"), headers=XFF).json()
    assert scope["client"][0] == "127.0.0.2"
    assert scope["scheme"] == "http"


def test_headers_ignored_without_proxy_headers_flag(server):
    scope = scope_via(server, XFF)
    assert scope["client"][0] == "127.0.0.1"
    assert scope["scheme"] == "http"


def test_right_most_untrusted_address_is_the_client(proxied):
    scope = scope_via(proxied, {"X-Forwarded-For": "10.0.0.1, 198.51.100.2, 127.0.0.1"})
    assert scope["client"] == ["198.51.100.2", 0]


def test_several_x_forwarded_for_headers_are_joined(proxied):
    lines = ("X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 198.51.100.2\r\n")
    with socket.create_connection((proxied.host, proxied.port), timeout=5) as sock:
        sock.sendall(f"GET /scope HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode())
        scope = json.loads(Reader(sock).response().body)
    assert scope["client"] == ["198.51.100.2", 0]


def test_forwarded_allow_ips_list_and_networks(serve):
    proc = serve(APP, "--proxy-headers", "--forwarded-allow-ips",
                 "127.0.0.2, 198.51.100.0/24")
    via_trusted = scope_via(proc, {"X-Forwarded-For": "10.0.0.1, 198.51.100.2"},
                            source="127.0.0.2")
    assert via_trusted["client"] == ["10.0.0.1", 0]
    # 127.0.0.1 is no longer trusted.
    via_other = scope_via(proc, {"X-Forwarded-For": "10.0.0.1"})
    assert via_other["client"][0] == "127.0.0.1"


def test_forwarded_allow_ips_star_trusts_everyone_and_takes_left_most(serve):
    proc = serve(APP, "--proxy-headers", "--forwarded-allow-ips", "*")
    scope = scope_via(proc, {"X-Forwarded-For": "10.0.0.1, 198.51.100.2"},
                      source="127.0.0.2")
    assert scope["client"] == ["10.0.0.1", 0]


def test_forwarded_allow_ips_alone_turns_proxy_headers_on(serve):
    """--forwarded-allow-ips without --proxy-headers was silently ignored.
    uvicorn reads proxy headers by default, so its users give only this
    flag; naming the trusted proxies turns proxy headers on here too."""
    proc = serve(APP, "--forwarded-allow-ips", "127.0.0.2")
    scope = scope_via(proc, XFF, source="127.0.0.2")
    assert scope["client"] == ["203.0.113.7", 8443]
    assert scope["scheme"] == "https"
    # Only the named peer is trusted.
    assert scope_via(proc, XFF)["client"][0] == "127.0.0.1"


def test_run_with_forwarded_allow_ips_alone_turns_proxy_headers_on():
    """cdaphne.run(forwarded_allow_ips=...) as the flag (it was ignored
    there): Config's defaults decide it, for the CLI and the API alike."""
    code = ("import cdaphne; cdaphne.run('tests.apps.http1:app', host='127.0.0.1', "
            "port=0, forwarded_allow_ips='127.0.0.2', configure_logging=True)")
    proc = ServerProcess([], cmd=[sys.executable, "-c", code])
    try:
        proc.wait_listening()
        scope = scope_via(proc, XFF, source="127.0.0.2")
        assert scope["client"] == ["203.0.113.7", 8443]
        assert scope_via(proc, XFF)["client"][0] == "127.0.0.1"
    finally:
        assert proc.stop() == 0, proc.log_tail()


def test_config_defaults_for_proxy_headers():
    # The environment names whom to trust; alone it turns nothing on.
    assert Config("m:a").proxy_headers is False
    assert Config("m:a", forwarded_allow_ips="*").proxy_headers is True
    assert Config("m:a", proxy_headers=False, forwarded_allow_ips="*").proxy_headers is False
    os.environ["FORWARDED_ALLOW_IPS"] = "10.0.0.1"
    try:
        config = Config("m:a")
    finally:
        del os.environ["FORWARDED_ALLOW_IPS"]
    assert (config.proxy_headers, config.forwarded_allow_ips) == (False, "10.0.0.1")
    assert Config("m:a").forwarded_allow_ips == "127.0.0.1"


def test_forwarded_allow_ips_environment_alone_trusts_nothing(serve):
    """$FORWARDED_ALLOW_IPS only says whom --proxy-headers trusts: set in
    the environment for another server, it turns nothing on."""
    proc = serve(APP, env={"FORWARDED_ALLOW_IPS": "*"})
    scope = scope_via(proc, XFF)
    assert scope["client"][0] == "127.0.0.1"
    assert scope["scheme"] == "http"


def test_proxy_headers_host_and_port_options(serve):
    proc = serve(APP, "--proxy-headers", "--proxy-headers-host", "X-Real-IP",
                 "--proxy-headers-port", "X-Real-Port")
    scope = scope_via(proc, {"X-Real-IP": "192.0.2.9", "X-Real-Port": "5555",
                             "X-Forwarded-For": "10.9.9.9", "X-Forwarded-Port": "1"})
    assert scope["client"] == ["192.0.2.9", 5555]


def test_invalid_proto_is_ignored(proxied):
    scope = scope_via(proxied, {"X-Forwarded-Proto": "gopher"})
    assert scope["scheme"] == "http"


def test_forwarded_header_for_and_proto(proxied):
    scope = scope_via(proxied, {"Forwarded": "for=192.0.2.60;proto=https;by=203.0.113.43"})
    assert scope["client"] == ["192.0.2.60", 0]
    assert scope["scheme"] == "https"


def test_forwarded_header_quoted_ipv6_with_port(proxied):
    scope = scope_via(proxied, {"Forwarded": 'For="[2001:db8:cafe::17]:4711";Proto=HTTPS'})
    assert scope["client"] == ["2001:db8:cafe::17", 4711]
    assert scope["scheme"] == "https"


def test_forwarded_header_several_hops(proxied):
    scope = scope_via(proxied, {
        "Forwarded": 'for=198.51.100.1;proto=https, for="10.0.0.5:80";proto=http, '
                     'for=127.0.0.1'})
    assert scope["client"] == ["10.0.0.5", 80]
    assert scope["scheme"] == "http"


def test_forwarded_header_wins_over_x_forwarded(proxied):
    scope = scope_via(proxied, {"Forwarded": "for=192.0.2.1;proto=https", **XFF})
    assert scope["client"] == ["192.0.2.1", 0]
    assert scope["scheme"] == "https"


def test_forwarded_header_from_untrusted_peer_ignored(proxied):
    scope = scope_via(proxied, {"Forwarded": "for=192.0.2.1;proto=https"},
                      source="127.0.0.2")
    assert scope["client"][0] == "127.0.0.2"
    assert scope["scheme"] == "http"


def test_access_log_shows_forwarded_client(serve):
    proc = serve(APP, "--proxy-headers", "--access-log", "-")
    scope_via(proc, {"X-Forwarded-For": "203.0.113.7"})
    proc.stop()
    assert "203.0.113.7:0" in proc.stdout


def test_bad_forwarded_allow_ips_is_one_clear_line():
    import subprocess
    import sys

    from .conftest import ROOT
    p = subprocess.run([sys.executable, "-m", "cdaphne", "-p", "0", "--proxy-headers",
                        "--forwarded-allow-ips", "10.0.0.0/99", APP], cwd=ROOT,
                       capture_output=True, text=True, timeout=10)
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "10.0.0.0/99" in p.stderr


def test_bad_forwarded_allow_ips_with_workers_is_one_clear_line():
    """Each worker printed it and the supervisor logged their failure."""
    import subprocess
    import sys

    from .conftest import ROOT
    p = subprocess.run([sys.executable, "-m", "cdaphne", "-p", "0", "--workers", "2",
                        "--proxy-headers", "--forwarded-allow-ips", "10.0.0.0/99", APP],
                       cwd=ROOT, capture_output=True, text=True, timeout=20)
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "10.0.0.0/99" in p.stderr


# ---- the middleware on its own (WebSocket scopes have no server path yet) ----

def run_middleware(scope: dict, **kw) -> dict:
    seen = {}

    async def app(scope, receive, send):
        seen.update(scope)

    asyncio.run(ProxyHeadersMiddleware(app, **kw)(scope, None, None))
    return seen


@pytest.mark.parametrize("proto,expected", [("https", "wss"), ("http", "ws"),
                                            ("wss", "wss"), ("ws", "ws")])
def test_websocket_scope_gets_ws_schemes(proto, expected):
    scope = {"type": "websocket", "scheme": "ws", "client": ("127.0.0.1", 1),
             "headers": [(b"x-forwarded-proto", proto.encode())]}
    assert run_middleware(scope)["scheme"] == expected


def test_lifespan_scope_passes_through():
    scope = {"type": "lifespan"}
    assert run_middleware(scope) == {"type": "lifespan"}


def test_parse_forwarded_quoting():
    assert parse_forwarded('for="a,b;c";proto=http, for=x') == [
        {"for": "a,b;c", "proto": "http"}, {"for": "x"}]


def test_unix_socket_peer_is_trusted(serve, tmp_path):
    path = str(tmp_path / "p.sock")
    serve(APP, "--proxy-headers", "-u", path, port=False)
    with httpx.Client(transport=httpx.HTTPTransport(uds=path)) as client:
        scope = client.get("http://localhost/scope", headers=XFF).json()
    assert scope["client"] == ["203.0.113.7", 8443]
    assert scope["scheme"] == "https"
    assert scope["server"] == [path, None]


@pytest.mark.parametrize("port", [
    "\u00b2",  # latin-1 '²': str.isdigit() is True, int() raises (a 500 before)
    "1" * 5000,  # int() refuses more than 4300 digits (a 500 before)
    "99999",  # not a port: was put in scope["client"]
    "-5",
    "",
])
def test_malformed_forwarded_port_gives_port_zero(proxied, port):
    scope = scope_via(proxied, {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Port": port})
    assert scope["client"] == ["203.0.113.7", 0]
    scope = scope_via(proxied, {"Forwarded": f'for="203.0.113.8:{port}"'})
    assert scope["client"] == ["203.0.113.8", 0]
    scope = scope_via(proxied, {"Forwarded": f'for="[2001:db8::1]:{port}"'})
    assert scope["client"] == ["2001:db8::1", 0]
