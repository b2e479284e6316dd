"""cdaphne.pubsub with a real server and real WebSocket clients: delivery,
unsubscribe, disconnect cleanup, exclude_self, limits, slow subscribers,
publish from a thread and from an HTTP view (tests/apps/pubsub.py)."""

from __future__ import annotations

import base64
import json
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time

import httpx
import psutil
import pytest
import websocket

from .conftest import wait_until
from .django_helpers import free_port, redis_server
from .serverproc import ServerProcess
from .test_tls import pki, tls_flags  # noqa: F401 - pki is a fixture

APP = "tests.apps.pubsub:app"


class Member:
    """A WebSocket client of tests/apps/pubsub.py."""

    def __init__(self, proc, path: str = "/ws") -> None:
        self.ws = websocket.create_connection(proc.ws_url(path), timeout=10)
        self.hello = self.ws.recv()
        self.got: list[str | bytes] = []  # published frames seen so far
        self.n = 0

    def cmd(self, **cmd) -> str:
        """Run a command; frames that arrive before its answer go to .got."""
        self.ws.send(json.dumps(cmd))
        self.n += 1
        while True:
            msg = self.ws.recv()
            if msg == f"ack {self.n}" or (isinstance(msg, str) and msg.startswith("err ")):
                return msg
            self.got.append(msg)

    def sub(self, topic: str) -> None:
        assert self.cmd(op="sub", topic=topic) == f"ack {self.n}"

    def take(self, count: int) -> list[str | bytes]:
        """The next `count` published frames."""
        while len(self.got) < count:
            self.got.append(self.ws.recv())
        out, self.got = self.got[:count], self.got[count:]
        return out

    def close(self) -> None:
        self.ws.close()


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def stats(proc) -> dict:
    return httpx.get(proc.url("/stats"), timeout=10).json()


def test_scopes_offer_the_extension(serve):
    proc = serve(APP)
    assert httpx.get(proc.url("/scope")).json()["cdaphne.pubsub"] == {}
    m = Member(proc)
    assert m.hello.startswith("hello ")
    m.close()


def test_publish_reaches_every_subscriber_and_no_one_else(serve):
    proc = serve(APP)
    room = [Member(proc) for _ in range(5)]
    other = [Member(proc) for _ in range(3)]
    for m in room:
        m.sub("room.a")
    for m in other:
        m.sub("room-b_2")
    assert room[0].cmd(op="pub", topic="room.a", text="hello room") == f"ack {room[0].n}"
    for m in room:  # the publisher too: exclude_self is off
        assert m.take(1) == ["hello room"]
    other[0].cmd(op="pub", topic="room-b_2", bytes=b"\x00\xffmark".hex())
    for m in other:
        assert m.take(1) == [b"\x00\xffmark"]  # a binary frame, and nothing before it
    for m in room:
        m.cmd(op="send", text="x")
        assert m.got == ["x"]  # the echo, and nothing published before it
    for m in room + other:
        m.close()


def test_unsubscribe_and_exclude_self(serve):
    proc = serve(APP)
    a, b, c = Member(proc), Member(proc), Member(proc)
    for m in (a, b, c):
        m.sub("t")
    b.sub("t")  # twice: still one delivery
    c.cmd(op="unsub", topic="t")
    c.cmd(op="unsub", topic="never-joined")
    a.cmd(op="pub", topic="t", text="1", exclude_self=True)
    a.cmd(op="pub", topic="t", text="2")
    assert b.take(2) == ["1", "2"]
    assert a.take(1) == ["2"]
    c.cmd(op="send", text="x")
    assert c.got == ["x"]
    assert stats(proc)["subscriptions"] == 2
    for m in (a, b, c):
        m.close()


def test_subscribe_before_accept_raises(serve):
    proc = serve(APP)
    m = Member(proc, "/early")
    assert m.hello == (
        "RuntimeError: cdaphne.pubsub.subscribe before websocket.accept (state HANDSHAKE)"
    )
    m.close()


def test_topic_names_are_checked_like_group_names(serve):
    proc = serve(APP)
    m = Member(proc)
    for bad in ("", "x" * 100, "a b", "é", "a!b"):
        assert m.cmd(op="sub", topic=bad).startswith("err TypeError: Topic name must be"), bad
        assert m.cmd(op="pub", topic=bad, text="x").startswith("err TypeError"), bad
    m.sub("x" * 99)
    m.close()


def test_topics_per_connection_are_limited(serve):
    proc = serve(APP, "--pubsub-max-topics", "3")
    m = Member(proc)
    for t in ("a", "b", "c"):
        m.sub(t)
    m.sub("a")  # already in: not a new topic
    assert m.cmd(op="sub", topic="d") == (
        "err RuntimeError: cdaphne.pubsub.subscribe: a connection may subscribe to at "
        "most 3 topics (--pubsub-max-topics)"
    )
    m.close()


def test_disconnect_unsubscribes_everything(serve):
    proc = serve(APP)
    members = [Member(proc) for _ in range(4)]
    for i, m in enumerate(members):
        m.sub("all")
        m.sub(f"own.{i}")
    assert stats(proc)["topics"] == 5
    for m in members[:3]:
        m.close()
    wait_until(lambda: stats(proc)["subscriptions"] == 2)
    assert stats(proc)["topics"] == 2
    members[3].cmd(op="pub", topic="all", text="still here")
    assert members[3].take(1) == ["still here"]
    members[3].close()
    wait_until(lambda: stats(proc)["topics"] == 0)
    wait_until(lambda: stats(proc)["ws"] == 0)


def test_publish_from_an_http_view(serve):
    proc = serve(APP)
    members = [Member(proc) for _ in range(3)]
    for m in members:
        m.sub("news")
    r = httpx.get(proc.url("/publish"), params={"topic": "news", "text": "extra"})
    assert r.status_code == 200
    for m in members:
        assert m.take(1) == ["extra"]
        m.close()


def test_publish_from_a_thread_keeps_order(serve):
    proc = serve(APP)
    members = [Member(proc) for _ in range(3)]
    for m in members:
        m.sub("ticks")
    r = httpx.get(proc.url("/thread"), params={"topic": "ticks", "n": "2000"}, timeout=30)
    assert r.status_code == 200
    for m in members:
        assert m.take(2000) == [str(i) for i in range(2000)]
        m.close()


def test_many_threads_publish_while_the_loop_serves_and_nothing_is_lost(serve):
    proc = serve(APP)
    members = [Member(proc) for _ in range(3)]
    for m in members:
        m.sub("busy")
    threads, n = 8, 500
    done = threading.Event()

    def chatter(m: Member) -> None:
        # The loop keeps receiving WebSocket messages meanwhile.
        while not done.is_set():
            m.cmd(op="send", text="noise")

    busy = Member(proc)
    t = threading.Thread(target=chatter, args=(busy,), daemon=True)
    t.start()
    r = httpx.get(
        proc.url("/threads"), params={"topic": "busy", "n": n, "threads": threads}, timeout=60
    )
    done.set()
    t.join(30)
    assert r.status_code == 200
    for m in members:
        per: dict[int, list[int]] = {}
        for msg in m.take(threads * n):
            k, i = msg.split(":")
            per.setdefault(int(k), []).append(int(i))
        assert per == {k: list(range(n)) for k in range(threads)}
        m.close()
    busy.close()
    assert stats(proc)["published"] == threads * n


def test_another_cdaphne_loop_in_the_process_leaves_the_servers_pubsub_alone(serve):
    proc = serve(APP)
    m = Member(proc)
    m.sub("ticks")
    assert httpx.get(proc.url("/other-loop"), timeout=30).status_code == 200
    assert stats(proc)["running"] is True
    r = httpx.get(proc.url("/thread"), params={"topic": "ticks", "n": "3"}, timeout=30)
    assert r.status_code == 200
    assert m.take(3) == ["0", "1", "2"]
    m.close()


# ---- many subscribers, some never reading ---------------------------------


def raw_member(port: int, topic: str, rcvbuf: int | None = None) -> socket.socket:
    """A subscriber on a raw socket (cheap enough for hundreds)."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    payload = json.dumps({"op": "sub", "topic": topic}).encode()
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + body)
    buf = b""
    while b"ack 1" not in buf:
        chunk = sock.recv(4096)
        assert chunk, buf
        buf += chunk
    return sock


def frames(data: bytes):
    """(opcode, payload) of each whole server frame in data."""
    pos = 0
    while pos + 2 <= len(data):
        op, n = data[pos] & 0x0F, data[pos + 1] & 0x7F
        pos += 2
        if n == 126:
            (n,) = struct.unpack_from("!H", data, pos)
            pos += 2
        elif n == 127:
            (n,) = struct.unpack_from("!Q", data, pos)
            pos += 8
        if pos + n > len(data):
            return
        yield op, data[pos : pos + n]
        pos += n


def drain(socks: list[socket.socket], counts: dict, stop: threading.Event) -> None:
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    while not stop.is_set():
        for key, _ in sel.select(0.1):
            try:
                data = key.fileobj.recv(1 << 20)
            except BlockingIOError:
                continue
            counts[key.fileobj] = counts.get(key.fileobj, 0) + len(data)
            if not data:
                sel.unregister(key.fileobj)
    sel.close()


def test_memory_stays_bounded_with_500_subscribers_some_never_reading(serve):
    proc = serve(APP, "--pubsub-max-queue", "262144")
    server = psutil.Process(proc.proc.pid)
    # Readers with big buffers keep up with an unpaced publisher.
    readers = [raw_member(proc.port, "flood", rcvbuf=4 << 20) for _ in range(100)]
    stuck = [raw_member(proc.port, "flood", rcvbuf=4096) for _ in range(400)]
    assert stats(proc)["subscriptions"] == 500
    counts: dict = {}
    stop = threading.Event()
    t = threading.Thread(target=drain, args=(readers, counts, stop), daemon=True)
    t.start()
    rss0 = server.memory_info().rss
    # Rounds of 500 messages of 1 KiB until every stuck client is closed
    # (the kernel holds a few MiB for each before the server queues any).
    size, want, rounds = 1024, 0, 0
    try:
        while stats(proc)["slow_closed"] < 400 and rounds < 20:
            r = httpx.get(
                proc.url("/thread"), params={"topic": "flood", "n": 500, "size": size}, timeout=120
            )
            assert r.status_code == 200
            # Message i is "<i> " plus `size` bytes, in a 4-byte-header frame.
            want += sum(4 + len(str(i)) + 1 + size for i in range(500))
            rounds += 1
            peak = server.memory_info().rss
            assert peak - rss0 < 64 << 20, (rounds, peak - rss0)
        assert stats(proc)["slow_closed"] == 400
        wait_until(lambda: all(counts.get(s, 0) >= want for s in readers), timeout=120)
    finally:
        stop.set()
        t.join()
    assert all(counts[s] == want for s in readers)  # every reader got everything
    for sock in readers + stuck:
        sock.close()
    wait_until(lambda: stats(proc)["subscriptions"] == 0)


def test_a_subscriber_that_never_reads_is_closed_1013_while_others_keep_up(serve):
    proc = serve(APP, "--pubsub-max-queue", "262144")
    fast = [Member(proc) for _ in range(3)]
    for m in fast:
        m.sub("big")
    publisher = Member(proc)
    # Default buffers: the kernel holds a few MiB for each before the
    # server queues anything; then they read fast enough to see the close.
    slow = [raw_member(proc.port, "big") for _ in range(3)]
    n = 600
    got: list[list] = [[] for _ in fast]

    def read(i: int) -> None:
        while len(got[i]) < n:
            got[i].append(fast[i].ws.recv())

    threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    payload = "y" * 16384

    def publish_all() -> None:
        # The readers keep up (at most 32 messages behind); the stuck
        # clients fall behind without bound.
        for i in range(n):
            while min(len(g) for g in got) < i - 32:
                time.sleep(0.001)
            publisher.cmd(op="pub", topic="big", text=f"{i} {payload}")

    pub = threading.Thread(target=publish_all, daemon=True)
    pub.start()
    # The stuck clients reach the bound together; read them at once, before
    # the server gives up waiting for their close (5 s).
    wait_until(lambda: stats(proc)["slow_closed"] == 3, timeout=60)
    data = {s: b"" for s in slow}
    sel = selectors.DefaultSelector()
    for sock in slow:
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ)
    deadline = time.monotonic() + 30
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(0.5):
            try:
                chunk = key.fileobj.recv(1 << 20)
            except BlockingIOError:
                continue
            if not chunk:
                sel.unregister(key.fileobj)
            else:
                data[key.fileobj] += chunk
    for sock in slow:
        closes = [p for op, p in frames(data[sock]) if op == 8]
        assert closes and struct.unpack("!H", closes[0][:2])[0] == 1013, len(data[sock])
        sock.close()
    pub.join(60)
    for t in threads:
        t.join(60)
    for i in range(3):
        assert [g.split(" ", 1)[0] for g in got[i]] == [str(k) for k in range(n)]
    wait_until(lambda: stats(proc)["subscriptions"] == 3)
    for m in fast + [publisher]:
        m.close()


# ---- cdaphne.channels.PubSubMixin: native under cdaphne, groups under Daphne


class Consumer:
    """A client of tests/apps/pubsub_channels.py."""

    def __init__(self, url: str) -> None:
        self.ws = websocket.create_connection(url, timeout=10)
        self.native = json.loads(self.ws.recv())["native"]
        self.got: list = []

    def cmd(self, **cmd) -> None:
        self.ws.send(json.dumps(cmd))
        while True:
            msg = self.ws.recv()
            if isinstance(msg, str) and msg.startswith('{"ack"'):
                return
            self.got.append(msg)

    def take(self, count: int) -> list:
        while len(self.got) < count:
            self.got.append(self.ws.recv())
        out, self.got = self.got[:count], self.got[count:]
        return out


@pytest.mark.parametrize("kind", ["cdaphne", "daphne"])
def test_mixin_works_natively_under_cdaphne_and_through_groups_under_daphne(serve, kind):
    app = "tests.apps.pubsub_channels:application"
    if kind == "cdaphne":
        base = serve(app).ws_url("/")
        check_mixin(base, native=True)
        return
    port = free_port()
    daphne = ServerProcess(
        ["-b", "127.0.0.1", "-p", str(port), app], cmd=[sys.executable, "-m", "daphne"]
    )
    try:
        wait_until(lambda: port_open(port), timeout=20)
        check_mixin(f"ws://127.0.0.1:{port}/", native=False)
    finally:
        # Daphne's own shutdown is not under test (it sometimes takes over
        # 10 s to stop after sync consumers ran): kill it.
        daphne.stop(signal.SIGKILL)


def check_mixin(base: str, native: bool) -> None:
    members = [Consumer(base + p) for p in ("async/", "sync/", "async/", "sync/")]
    assert [m.native for m in members] == [native] * 4
    for m in members[:3]:
        m.cmd(op="sub", topic="room.1")
    members[3].cmd(op="pub", topic="room.1", text="from sync")
    for m in members[:3]:
        assert m.take(1) == ["from sync"]
    members[1].cmd(op="pub", topic="room.1", bytes=b"\x01\x02".hex(), exclude_self=True)
    assert members[0].take(1) == [b"\x01\x02"]
    assert members[2].take(1) == [b"\x01\x02"]
    members[0].cmd(op="unsub", topic="room.1")
    members[2].cmd(op="pub", topic="room.1", text="after unsub")
    assert members[1].take(1) == ["after unsub"]
    assert members[2].take(1) == ["after unsub"]
    # cdaphne.channels.publish() from sync code (a view): pub/sub or group_send.
    http = base.replace("ws://", "http://")
    r = httpx.get(http + "publish", params={"topic": "room.1", "text": "from a view"})
    assert r.status_code == 200
    for m in members[1:3]:
        assert m.take(1) == ["from a view"]
    members[0].cmd(op="sub", topic="other")  # nothing arrived before this ack
    assert members[0].got == [] and members[3].got == []
    for m in members:
        m.ws.close()


# ---- across workers (the supervisor's hub) and hosts (Redis) ---------------


def members_on_workers(proc, per_worker: int = 2, tries: int = 80) -> dict[int, list[Member]]:
    """Members until each of the two workers has `per_worker` of them."""
    by_pid: dict[int, list[Member]] = {}
    extra = []
    for _ in range(tries):
        m = Member(proc)
        pid = int(m.hello.split()[1])
        if len(by_pid.setdefault(pid, [])) < per_worker:
            by_pid[pid].append(m)
        else:
            extra.append(m)
        if len(by_pid) == 2 and all(len(v) == per_worker for v in by_pid.values()):
            break
    for m in extra:
        m.close()
    assert len(by_pid) == 2 and all(len(v) == per_worker for v in by_pid.values()), by_pid
    return by_pid


def collect(m: Member, count: int) -> list:
    """The next `count` frames that are not probes (see wait_reaches)."""
    seen = [g for g in m.got if not (isinstance(g, str) and g.startswith("probe"))]
    m.got = []
    while len(seen) < count:
        g = m.ws.recv()
        if not (isinstance(g, str) and g.startswith("probe")):
            seen.append(g)
    assert len(seen) == count, seen[count:]
    return seen


def wait_reaches(sender: Member, receivers: list[Member], topic: str) -> None:
    """Probe until a publish from sender reaches every receiver (the other
    worker's subscription travels to the hub on its own)."""
    deadline = time.monotonic() + 20
    k = 0
    while not all(
        any(isinstance(g, str) and g.startswith("probe") for g in r.got) for r in receivers
    ):
        assert time.monotonic() < deadline, "the other worker never got a publish"
        sender.cmd(op="pub", topic=topic, text=f"probe {k}")
        k += 1
        for r in receivers:
            r.ws.settimeout(0.1)
            try:
                r.got.append(r.ws.recv())
            except websocket.WebSocketTimeoutException:
                pass
            finally:
                r.ws.settimeout(10)


def test_publish_reaches_subscribers_in_other_workers_in_order(serve):
    proc = serve(APP, "--workers", "2")
    by_pid = members_on_workers(proc)
    (a1, a2), (b1, b2) = by_pid.values()
    everyone = [a1, a2, b1, b2]
    for m in everyone:
        m.sub("x")
    loner = Member(proc)  # on some worker, in no topic
    wait_reaches(a1, [b1, b2], "x")
    wait_reaches(b1, [a1, a2], "x")
    for i in range(100):
        a1.cmd(op="pub", topic="x", text=f"a {i}")
        b1.cmd(op="pub", topic="x", text=f"b {i}")
    for m in everyone:
        seen = collect(m, 200)
        assert [s for s in seen if s.startswith("a ")] == [f"a {i}" for i in range(100)]
        assert [s for s in seen if s.startswith("b ")] == [f"b {i}" for i in range(100)]
    loner.cmd(op="send", text="x")
    assert loner.got == ["x"]
    for m in everyone + [loner]:
        m.close()


@pytest.mark.redis
def test_publish_reaches_another_server_through_redis(serve, tmp_path):
    with redis_server(tmp_path) as url:
        one = serve(APP, "--pubsub-redis", url)
        two = serve(APP, "--pubsub-redis", url, "--workers", "2")
        here = [Member(one), Member(one)]
        there = [Member(two) for _ in range(4)]  # likely on both workers
        for m in here + there:
            m.sub("news")
        here[0].cmd(op="pub", topic="news", text="from one")
        for m in here + there:
            assert m.take(1) == ["from one"]  # once each: not echoed back by Redis
        r = httpx.get(two.url("/thread"), params={"topic": "news", "n": "300"}, timeout=30)
        assert r.status_code == 200
        for m in here + there:
            assert m.take(300) == [str(i) for i in range(300)]
        there[0].cmd(op="pub", topic="news", bytes=b"\x00b".hex(), exclude_self=True)
        for m in here + there[1:]:
            assert m.take(1) == [b"\x00b"]
        for m in here + there:
            m.cmd(op="send", text="end")
            assert m.got == ["end"]
            m.close()


def test_pubsub_over_tls(serve, pki):  # noqa: F811 - the fixture
    """Frames fanned out in C go through the TLS transport like any write."""
    proc = serve(APP, *tls_flags(pki))
    opts = {"ca_certs": str(pki / "ca.pem")}
    members = []
    for _ in range(3):
        ws = websocket.create_connection(f"wss://localhost:{proc.port}/ws", sslopt=opts, timeout=10)
        m = Member.__new__(Member)
        m.ws, m.hello, m.got, m.n = ws, ws.recv(), [], 0
        members.append(m)
    for m in members:
        m.sub("secure")
    big = "z" * 100_000
    members[0].cmd(op="pub", topic="secure", text="small")
    members[1].cmd(op="pub", topic="secure", text=big)
    for m in members:
        assert m.take(2) == ["small", big]
        m.close()


def test_pubsub_to_members_with_permessage_deflate(serve):
    """With permessage-deflate negotiated (on by default), the shared frame
    goes out uncompressed (RSV1 clear), which RFC 7692 allows, between the
    member's compressed frames."""
    import asyncio

    import websockets

    proc = serve(APP)

    async def main() -> None:
        url = proc.ws_url("/ws")
        async with (
            websockets.connect(url, compression="deflate") as a,
            websockets.connect(url) as b,
        ):
            assert "permessage-deflate" in (
                a.response.headers.get("sec-websocket-extensions") or ""
            )
            for ws in (a, b):
                assert (await ws.recv()).startswith("hello")
                await ws.send(json.dumps({"op": "sub", "topic": "z"}))
                assert await ws.recv() == "ack 1"
            await a.send(json.dumps({"op": "send", "text": "y" * 1000}))  # compressed
            await b.send(json.dumps({"op": "pub", "topic": "z", "text": "x" * 1000}))
            got = [await a.recv() for _ in range(3)]
            assert sorted(got) == sorted(["y" * 1000, "ack 2", "x" * 1000])
            assert [await b.recv() for _ in range(2)] == ["x" * 1000, "ack 2"]

    asyncio.run(main())
