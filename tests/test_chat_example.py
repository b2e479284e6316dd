"""The chat example served by a real server process, driven by real clients.

Each server is started once per module (per server and channel layer); Daphne
is the reference server when it is installed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import httpx
import pytest
import websocket

from .django_helpers import (
    EXAMPLE_DIR,
    ServerProcess,
    WSClient,
    asgi_server_command,
    example_env,
    free_port,
    http_get,
    manage,
    migrate,
    read_sse_events,
    redis_server,
    require_server,
)

USERNAME = "alice"
PASSWORD = "correct-horse-battery-staple"

# (server, channel layer): cdaphne with every layer, Daphne as the reference.
SERVERS = [
    pytest.param(("cdaphne", "memory"), id="cdaphne-memory"),
    pytest.param(("cdaphne", "cdaphne"), id="cdaphne-cdaphnelayer"),
    pytest.param(("cdaphne", "redis"), id="cdaphne-redis", marks=pytest.mark.redis),
    pytest.param(("cdaphne", "redis-pubsub"), id="cdaphne-redispubsub", marks=pytest.mark.redis),
    pytest.param(("daphne", "memory"), id="reference-daphne"),
]


@dataclass
class ChatServer:
    kind: str
    layer: str
    port: int
    process: ServerProcess

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def client(self, path: str, **kwargs: object) -> WSClient:
        return WSClient(self.ws + path, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=SERVERS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChatServer]:
    kind, layer = request.param
    require_server(kind)
    if layer == "cdaphne":
        pytest.importorskip("cdaphne.layers", reason="cdaphne.layers does not exist yet")
    tmp = tmp_path_factory.mktemp(f"chat-{kind}-{layer}")
    with ExitStack() as stack:
        extra = {"CHAT_CHANNEL_LAYER": layer}
        if layer.startswith("redis"):
            extra["REDIS_URL"] = stack.enter_context(redis_server(tmp))
        env = example_env(tmp, **extra)
        # The example runs from its own directory; only the database is private.
        migrate(EXAMPLE_DIR, env)
        created = manage(
            EXAMPLE_DIR,
            "createsuperuser",
            "--noinput",
            f"--username={USERNAME}",
            "--email=alice@example.com",
            env={**env, "DJANGO_SUPERUSER_PASSWORD": PASSWORD},
        )
        assert created.returncode == 0, created.stderr
        port = free_port()
        process = ServerProcess(
            asgi_server_command(kind, port), EXAMPLE_DIR, env, tmp / "server.log"
        )
        stack.callback(process.stop)
        process.wait_listening(port)
        yield ChatServer(kind, layer, port, process)


def test_index_page_lists_rooms(server: ChatServer) -> None:
    response = http_get(server.http + "/")
    assert response.status_code == 200
    assert 'id="room-name-input"' in response.text
    assert 'href="/chat/lobby/"' in response.text


def test_room_page_has_log_input_and_script(server: ChatServer) -> None:
    response = http_get(server.http + "/chat/lobby/")
    assert response.status_code == 200
    for element in ('id="chat-log"', 'id="chat-message-input"', 'id="chat-message-submit"'):
        assert element in response.text
    assert "/static/chat/room.js" in response.text


def test_static_files_are_served_in_debug(server: ChatServer) -> None:
    response = http_get(server.http + "/static/chat/room.js")
    assert response.status_code == 200
    assert "new WebSocket(url)" in response.text


def test_two_clients_in_one_room_see_each_others_messages(server: ChatServer) -> None:
    alice = server.client("/ws/chat/room-a/")
    bob = server.client("/ws/chat/room-a/")
    try:
        alice.say("hello from alice")
        assert alice.recv_json() == {"message": "hello from alice", "user": "anonymous"}
        assert bob.recv_json() == {"message": "hello from alice", "user": "anonymous"}
        bob.say("hi alice")
        assert alice.recv_json()["message"] == "hi alice"
        assert bob.recv_json()["message"] == "hi alice"
    finally:
        alice.close()
        bob.close()


def test_a_client_in_another_room_sees_nothing(server: ChatServer) -> None:
    alice = server.client("/ws/chat/room-b/")
    eve = server.client("/ws/chat/elsewhere/")
    try:
        alice.say("for room-b only")
        assert alice.recv_json()["message"] == "for room-b only"
        eve.expect_nothing(within=1.0)
    finally:
        alice.close()
        eve.close()


def test_sync_consumer_variant_shares_the_room_with_the_async_one(server: ChatServer) -> None:
    sync_a = server.client("/ws/chat-sync/room-c/")
    sync_b = server.client("/ws/chat-sync/room-c/")
    async_c = server.client("/ws/chat/room-c/")
    try:
        sync_a.say("from a sync consumer")
        for client in (sync_a, sync_b, async_c):
            assert client.recv_json() == {"message": "from a sync consumer", "user": "anonymous"}
        async_c.say("from an async consumer")
        for client in (sync_a, sync_b, async_c):
            assert client.recv_json()["message"] == "from an async consumer"
    finally:
        for client in (sync_a, sync_b, async_c):
            client.close()


def test_pubsub_room_variant_delivers_to_its_room_only(server: ChatServer) -> None:
    """PubSubMixin: C fan-out under cdaphne, groups under Daphne."""
    a = server.client("/ws/pubsub-chat/room-p/")
    b = server.client("/ws/pubsub-chat-sync/room-p/")
    eve = server.client("/ws/pubsub-chat/elsewhere/")
    grouped = server.client("/ws/chat/room-p/")  # the group room of that name
    try:
        a.say("from the async one")
        for client in (a, b):
            assert client.recv_json() == {"message": "from the async one", "user": "anonymous"}
        b.say("from the sync one")
        for client in (a, b):
            assert client.recv_json()["message"] == "from the sync one"
        for i in range(30):
            a.say(f"m{i}")
        assert [b.recv_json()["message"] for _ in range(30)] == [f"m{i}" for i in range(30)]
        eve.expect_nothing(within=0.5)
        grouped.expect_nothing(within=0.1)
    finally:
        for client in (a, b, eve, grouped):
            client.close()


def test_malformed_frame_gets_an_error_and_the_socket_stays_open(server: ChatServer) -> None:
    client = server.client("/ws/chat/room-d/")
    try:
        client.ws.send("not json")
        assert "error" in client.recv_json()
        client.say("still here")
        assert client.recv_json()["message"] == "still here"
    finally:
        client.close()


def test_many_messages_arrive_in_order(server: ChatServer) -> None:
    sender = server.client("/ws/chat/room-e/")
    receiver = server.client("/ws/chat/room-e/")
    try:
        for i in range(50):
            sender.say(f"m{i}")
        assert [receiver.recv_json()["message"] for _ in range(50)] == [f"m{i}" for i in range(50)]
    finally:
        sender.close()
        receiver.close()


def test_json_consumer_answers_ping_and_echoes(server: ChatServer) -> None:
    client = server.client("/ws/whoami/")
    try:
        hello = client.recv_json()
        assert hello["user"] == "anonymous"
        assert hello["authenticated"] is False
        assert hello["path"] == "/ws/whoami/"
        client.send_json({"type": "ping"})
        assert client.recv_json() == {"type": "pong"}
        client.send_json([1, "two", {"three": 3}])
        assert client.recv_json() == {"echo": [1, "two", {"three": 3}]}
    finally:
        client.close()


def test_websocket_from_a_foreign_origin_is_rejected(server: ChatServer) -> None:
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        server.client("/ws/chat/room-f/", origin="http://evil.example")
    assert info.value.status_code == 403


def test_unknown_websocket_path_is_refused(server: ChatServer) -> None:
    with pytest.raises(websocket.WebSocketException):
        client = server.client("/ws/nowhere/")
        # Some servers accept the handshake and close at once.
        client.ws.recv()


def test_server_sent_events_stream_ticks(server: ChatServer) -> None:
    with httpx.stream("GET", server.http + "/events/?count=3&interval=0.1", timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        # The stream ends by itself after the last tick.
        events = read_sse_events(r)
    assert [e["id"] for e in events] == ["0", "1", "2"]
    assert {e["event"] for e in events} == {"tick"}


def test_server_sent_events_relay_a_rooms_messages(server: ChatServer) -> None:
    with httpx.stream("GET", server.http + "/events/?room=room-g", timeout=10) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        assert next(lines) == ": stream opened"  # subscribed before the first chunk
        client = server.client("/ws/chat/room-g/")
        try:
            client.say("to the SSE listeners")
            assert client.recv_json()["message"] == "to the SSE listeners"
        finally:
            client.close()
        event = read_sse_events_from(lines)
    assert event["event"] == "message"
    assert '"message": "to the SSE listeners"' in event["data"]


def read_sse_events_from(lines: Iterator[str]) -> dict[str, str]:
    event: dict[str, str] = {}
    for line in lines:
        if not line:
            if event:
                return event
            continue
        field, _, value = line.partition(": ")
        event[field] = value
    raise AssertionError("stream ended")


def login(server: ChatServer) -> httpx.Client:
    client = httpx.Client(base_url=server.http, timeout=10)
    page = client.get("/admin/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token, page.text
    response = client.post(
        "/admin/login/?next=/admin/",
        data={
            "username": USERNAME,
            "password": PASSWORD,
            "csrfmiddlewaretoken": token.group(1),
            "next": "/admin/",
        },
    )
    assert response.status_code == 302, response.text
    return client


def test_logged_in_user_is_in_the_websocket_scope(server: ChatServer) -> None:
    browser = login(server)
    try:
        cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
        page = browser.get("/chat/lobby/")
        assert f'id="whoami">{USERNAME}<' in page.text
    finally:
        browser.close()
    whoami = server.client("/ws/whoami/", cookie=cookie)
    chat = server.client("/ws/chat/room-h/", cookie=cookie)
    try:
        hello = whoami.recv_json()
        assert hello["user"] == USERNAME
        assert hello["authenticated"] is True
        assert hello["has_session"] is True
        chat.say("signed message")
        assert chat.recv_json() == {"message": "signed message", "user": USERNAME}
    finally:
        whoami.close()
        chat.close()


def test_server_log_has_no_unexpected_tracebacks(server: ChatServer) -> None:
    # Runs last in this module: nothing above may have crashed the app, except
    # Channels' URLRouter raising for the unknown path, as it does everywhere.
    output = server.process.output()
    expected = output.count("ValueError: No route found for path 'ws/nowhere/'")
    assert output.count("Traceback") == expected
