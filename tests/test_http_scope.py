"""The HTTP scope as compat.md specifies it, ASGI 2 apps and lifespan."""

from __future__ import annotations

import json
import signal

import httpx
import pytest

from .conftest import Reader, connect, request


def B(s: str) -> dict:
    return {"__bytes__": s}


def get_scope(proc, raw: bytes) -> dict:
    r = request(proc, raw)
    assert r.status == 200, r
    return json.loads(r.body)


def test_scope_has_exactly_the_specified_keys(server):
    scope = get_scope(server, b"GET /scope HTTP/1.1\r\nHost: x\r\n\r\n")
    assert set(scope) == {"type", "asgi", "http_version", "method", "scheme", "path",
                          "raw_path", "query_string", "root_path", "headers", "client",
                          "server", "extensions", "state"}
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.3"}
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    assert scope["root_path"] == ""
    assert isinstance(scope["extensions"], dict)


def test_scope_path_raw_path_and_query_string(server):
    scope = get_scope(server, b"GET /scope/%E2%82%AC%20x/%2F?a=1&b=%20%E2 HTTP/1.1\r\n"
                              b"Host: x\r\n\r\n")
    assert scope["path"] == "/scope/\u20ac x//"
    assert scope["raw_path"] == B("/scope/%E2%82%AC%20x/%2F")
    assert scope["query_string"] == B("a=1&b=%20%E2")


def test_scope_percent_decoding(server):
    r = request(server, b"GET /sc%6Fpe?q=%41+b HTTP/1.1\r\nHost: x\r\n\r\n")
    scope = json.loads(r.body)
    assert scope["path"] == "/scope"
    assert scope["raw_path"] == B("/sc%6Fpe")
    assert scope["query_string"] == B("q=%41+b")


def test_scope_utf8_path(server):
    # /scope is the route; the app sees the decoded path only when it matches,
    # so check decoding through a path that decodes to "/scope".
    r = request(server, b"GET /%73cope?x=%E2%82%AC HTTP/1.1\r\nHost: x\r\n\r\n")
    scope = json.loads(r.body)
    assert scope["path"] == "/scope"
    assert scope["raw_path"] == B("/%73cope")
    assert scope["query_string"] == B("x=%E2%82%AC")


def test_scope_without_query(server):
    scope = get_scope(server, b"GET /scope HTTP/1.1\r\nHost: x\r\n\r\n")
    assert scope["raw_path"] == B("/scope")
    assert scope["query_string"] == B("")


def test_scope_method_is_upper_case_and_any_method(server):
    for method in (b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"PROPFIND"):
        scope = get_scope(server, method + b" /scope HTTP/1.1\r\nHost: x\r\n"
                                           b"Content-Length: 0\r\n\r\n")
        assert scope["method"] == method.decode()


def test_scope_headers_lower_cased_in_order_with_duplicates(server):
    scope = get_scope(server, b"GET /scope HTTP/1.1\r\nHost: example.com\r\n"
                              b"X-B: 1\r\nX-A: two  \r\nX-B: 3\r\nCookie: a=1\r\n"
                              b"cookie: b=2\r\nUser-Agent: t/1\r\n\r\n")
    assert scope["headers"] == [
        [B("host"), B("example.com")],
        [B("x-b"), B("1")],
        [B("x-a"), B("two")],
        [B("x-b"), B("3")],
        [B("cookie"), B("a=1")],
        [B("cookie"), B("b=2")],
        [B("user-agent"), B("t/1")],
    ]


def test_scope_client_and_server_tcp(server):
    with connect(server) as sock:
        sock.sendall(b"GET /scope HTTP/1.1\r\nHost: x\r\n\r\n")
        scope = json.loads(Reader(sock).response().body)
        assert scope["client"] == ["127.0.0.1", sock.getsockname()[1]]
        assert scope["server"] == ["127.0.0.1", server.port]


def test_scope_http10(server):
    scope = get_scope(server, b"GET /scope HTTP/1.0\r\n\r\n")
    assert scope["http_version"] == "1.0"


def test_scope_root_path_from_cli(serve):
    proc = serve("tests.apps.http1:app", "--root-path", "/prefix")
    scope = httpx.get(proc.url("/scope")).json()
    assert scope["root_path"] == "/prefix"
    assert scope["path"] == "/scope"


def test_each_request_gets_its_own_scope_dict(serve):
    proc = serve("tests.apps.lifespan:with_state", "--lifespan", "on")
    with httpx.Client() as client:
        a = client.get(proc.url("/")).json()
        b = client.get(proc.url("/")).json()
    # The app increments state["counter"] in its (shallow) copy.
    assert a["state"]["counter"] == 1
    assert b["state"]["counter"] == 1


def test_asgi2_double_callable_class(serve):
    proc = serve("tests.apps.asgi2:App")
    r = httpx.post(proc.url("/two"), content=b"body")
    assert r.status_code == 200
    assert r.headers["x-asgi"] == "2"
    assert r.content == b"asgi2 /two body"


def test_asgi2_double_callable_function(serve):
    proc = serve("tests.apps.asgi2:app")
    r = httpx.get(proc.url("/fn"))
    assert r.content == b"asgi2 /fn "


# ---- lifespan -----------------------------------------------------------------

def test_lifespan_state_visible_in_requests(serve):
    proc = serve("tests.apps.lifespan:with_state")
    data = httpx.get(proc.url("/")).json()
    assert data["state"] == {"db": "connected", "counter": 1}
    assert data["events"] == ["startup"]


def test_lifespan_on_runs_startup_and_shutdown(serve, tmp_path):
    marker = tmp_path / "marker"
    proc = serve("tests.apps.lifespan:with_state", "--lifespan", "on",
                 env={"CDAPHNE_TEST_MARKER": str(marker)})
    assert marker.read_text() == "startup\n"
    assert proc.stop(signal.SIGTERM) == 0
    assert marker.read_text() == "startup\nshutdown\n"


def test_lifespan_off_never_calls_lifespan(serve, tmp_path):
    marker = tmp_path / "marker"
    proc = serve("tests.apps.lifespan:with_state", "--lifespan", "off",
                 env={"CDAPHNE_TEST_MARKER": str(marker)})
    data = httpx.get(proc.url("/")).json()
    # uvicorn's scope["state"] without lifespan: a copy of an empty dict.
    assert data["state"] == {"counter": 1}
    assert data["events"] == []
    assert proc.stop() == 0
    assert not marker.exists()


def test_lifespan_auto_app_raising_is_served_without_lifespan(serve):
    proc = serve("tests.apps.lifespan:raises_on_lifespan")
    data = httpx.get(proc.url("/")).json()
    assert data == {"has_state": True, "state": {"counter": 1}}
    log = proc.log
    lines = [ln for ln in log.splitlines() if "lifespan" in ln.lower()]
    assert len(lines) == 1, log
    assert "INFO" in lines[0]
    assert "Traceback" not in log


def test_lifespan_on_with_raising_app_fails_startup(serve):
    proc = serve("tests.apps.lifespan:raises_on_lifespan", "--lifespan", "on", listen=0)
    rc = proc.wait(10)
    assert rc != 0
    assert "Listening on" not in proc.log


def test_lifespan_startup_failed_exits_non_zero_with_one_clear_line(serve):
    proc = serve("tests.apps.lifespan:startup_fails", "--lifespan", "on", listen=0)
    rc = proc.wait(10)
    assert rc != 0
    errors = [ln for ln in proc.log.splitlines() if "database is down" in ln]
    assert len(errors) == 1, proc.log
    assert "Traceback" not in proc.log
    assert "Listening on" not in proc.log


def test_lifespan_startup_raises_with_lifespan_on_exits_non_zero(serve):
    proc = serve("tests.apps.lifespan:startup_raises", "--lifespan", "on", listen=0)
    rc = proc.wait(10)
    assert rc != 0
    assert "cannot connect to the database" in proc.log
    assert "Listening on" not in proc.log


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_lifespan_startup_failed_in_auto_mode_also_fails(serve, mode):
    proc = serve("tests.apps.lifespan:startup_fails", "--lifespan", mode, listen=0)
    assert proc.wait(10) != 0
