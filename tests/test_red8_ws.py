"""Red team, session 8: hostile WebSocket opening handshakes on a raw
socket (RFC 6455 4.2.1)."""

from __future__ import annotations

import socket

import pytest

APP = "tests.apps.ws:echo"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


@pytest.fixture
def server(serve):
    return serve(APP, "--ping-interval", "0")


def status(proc, key: str | None = KEY, version: str | None = "13", extra: str = "") -> int:
    head = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    if key is not None:
        head += f"Sec-WebSocket-Key: {key}\r\n"
    if version is not None:
        head += f"Sec-WebSocket-Version: {version}\r\n"
    with socket.create_connection((proc.host, proc.port), timeout=10) as sock:
        sock.sendall((head + extra + "\r\n").encode("latin-1"))
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1])


@pytest.mark.parametrize(
    "key",
    [
        "!!!!!!!!!!!!!!!!!!!!!!!!",  # 24 characters, not base64
        "AAAAAAAAAAAAAAAAAAAAAAA=",  # base64 of 17 bytes
        "AAAAAAAAAAAAAAAAAAAA",  # 15 bytes
        "dGhlIHNhbXBsZSBub25jZQ==dGhl",  # 28 characters
        "dGhlIHNhbXBsZSBub25jZQ",  # no padding
        "dGhlIHNhbXBsZSBub25j ZQ=",  # a space inside
    ],
)
def test_a_key_that_is_not_16_bytes_in_base64_gets_400(server, key):
    """RFC 6455 4.2.1 (5): the key is base64 of 16 bytes, else the server
    MUST answer with an error such as 400; Daphne (autobahn: 24 chars,
    "==", base64 alphabet) and uvicorn (websockets: b64decode(validate)
    of 16 bytes) do.  Any 16 to 40 bytes were accepted."""
    assert status(server, key) == 400
    assert status(server) == 101


@pytest.mark.parametrize(
    "version, code",
    [("8", 426), (None, 426), ("13, 8", 426), ("13", 101)],
)
def test_versions(server, version, code):
    assert status(server, version=version) == code


@pytest.mark.parametrize(
    "protocols",
    ["a, b", "a,,b", " , ", "a b", "x" * 5000, ",".join(f"p{i}" for i in range(1500))],
)
def test_odd_subprotocol_offers_still_connect(server, protocols):
    assert status(server, extra=f"Sec-WebSocket-Protocol: {protocols}\r\n") == 101


def h11_101(proc, target: str = "/", offer: str | None = None):
    """The h11 client connection and the response event to a handshake
    for target (offering the subprotocols in offer, if any)."""
    import h11

    conn = h11.Connection(h11.CLIENT)
    headers = [
        ("Host", "x"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", KEY),
        ("Sec-WebSocket-Version", "13"),
    ]
    if offer is not None:
        headers.append(("Sec-WebSocket-Protocol", offer))
    request = h11.Request(method="GET", target=target, headers=headers)
    with socket.create_connection((proc.host, proc.port), timeout=10) as sock:
        sock.sendall(conn.send(request) + conn.send(h11.EndOfMessage()))
        event = h11.NEED_DATA
        while event is h11.NEED_DATA:
            data = sock.recv(4096)
            assert data, "closed before the 101"
            conn.receive_data(data)
            event = conn.next_event()
    return conn, event


def test_app_connection_upgrade_and_accept_fields_stay_out_of_the_101(serve):
    """An app's own connection / upgrade fields in websocket.accept went
    into the 101 next to ours ("connection: close" beside "connection:
    Upgrade"); the 101 must say each once, the server's, and keep the
    app's other headers (strict clients: websockets and h11)."""
    import h11
    from websockets.sync.client import connect

    proc = serve("tests.apps.ws:echo_app_conn_fields", "--ping-interval", "0")
    with connect(proc.ws_url("/")) as ws:
        assert ws.response.headers.get_all("Connection") == ["Upgrade"]
        assert ws.response.headers.get_all("Upgrade") == ["websocket"]
        assert ws.response.headers["x-app"] == "kept"
        ws.send("still open")
        assert ws.recv() == "still open"
    conn, event = h11_101(proc)
    assert isinstance(event, h11.InformationalResponse)
    assert event.status_code == 101
    names = [name for name, _ in event.headers]
    assert names.count(b"connection") == 1
    assert names.count(b"upgrade") == 1
    assert names.count(b"sec-websocket-accept") == 1
    fields = dict(event.headers)
    assert fields[b"connection"] == b"Upgrade"
    assert fields[b"upgrade"] == b"websocket"
    assert fields[b"x-app"] == b"kept"
    assert conn.their_state is h11.SWITCHED_PROTOCOL


@pytest.mark.parametrize(
    "query, want",
    [
        ("key=chat&field=x", b"chat"),
        ("key=chat&field=chat", b"chat"),
        ("field=x", b"x"),
        ("field=x&field=chat", b"x"),
        ("key=chat", b"chat"),
    ],
)
def test_the_101_carries_one_subprotocol(serve, query, want):
    """An app's sec-websocket-protocol field in websocket.accept went out
    next to the subprotocol key's (two fields; clients fail the
    handshake).  The key wins and the app's fields are dropped, as Daphne
    sends only the key; without the key, the app's first field is kept
    (uvicorn sends an app's field) and any later ones are dropped."""
    import h11
    from websockets.sync.client import connect

    proc = serve("tests.apps.ws:echo_app_proto_fields", "--ping-interval", "0")
    _, event = h11_101(proc, "/?" + query, offer="chat, x")
    assert isinstance(event, h11.InformationalResponse)
    assert event.status_code == 101
    protos = [v for k, v in event.headers if k == b"sec-websocket-protocol"]
    assert protos == [want]
    assert dict(event.headers)[b"x-app"] == b"kept"
    with connect(proc.ws_url("/?" + query), subprotocols=["chat", "x"]) as ws:
        assert ws.subprotocol == want.decode()
        ws.send("still open")
        assert ws.recv() == "still open"
