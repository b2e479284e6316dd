"""--workers N: the supervisor, its workers and its signals, with real
processes and real clients.  The app (tests/apps/workers.py) answers with
the worker's pid."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from .conftest import ROOT, Reader, ServerProcess, wait_until

APP = "tests.apps.workers:app"
WORKERS_RE = re.compile(r"serving with \d+ workers \[([\d, ]+)\]")


def startup_pids(proc: ServerProcess) -> set[int]:
    m = WORKERS_RE.search(proc.log)
    assert m, proc.log_tail()
    return {int(p) for p in m.group(1).split(", ")}


def children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(p) for p in f.read().split()}


def gone(pid: int) -> bool:
    """The process exited (a zombie has closed its sockets already)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):  # reaped while reading
        return True


def get(proc: ServerProcess, path: str = "/", unix: str | None = None,
        sock: socket.socket | None = None, timeout: float = 5.0):
    """One request; on a fresh connection unless `sock` (keep-alive) is given."""
    own = sock is None
    if sock is None:
        if unix:
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(timeout)
            sock.connect(unix)
        else:
            sock = socket.create_connection((proc.host, proc.port), timeout=timeout)
    try:
        close = b"Connection: close\r\n" if own else b""
        sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\n" + close + b"\r\n")
        resp = Reader(sock, timeout).response()
    finally:
        if own:
            sock.close()
    assert resp.status == 200, resp
    return resp


def pid_of(resp) -> int:
    return int(resp.body)


class ClientLoop(threading.Thread):
    """Sequential requests on fresh connections until stopped (bounded)."""

    def __init__(self, proc: ServerProcess, limit: float = 15.0) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.limit = limit
        self.halt = threading.Event()
        self.pids: list[int] = []
        self.versions: list[str] = []
        self.failures: list[str] = []

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self.halt.is_set() and time.monotonic() < deadline:
            try:
                resp = get(self.proc)
                self.pids.append(pid_of(resp))
                self.versions.append(resp.header("x-app-version") or "")
            except Exception as exc:  # noqa: BLE001 - every failure counts
                self.failures.append(repr(exc))

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


def test_requests_spread_across_two_workers(serve):
    proc = serve(APP, "--workers", "2")
    pids = startup_pids(proc)
    assert len(pids) == 2
    assert children(proc.proc.pid) == pids
    seen = {pid_of(get(proc)) for _ in range(200)}
    assert seen == pids
    # Lifespan runs in each worker.
    for pid in pids:
        assert f"app startup in {pid}" in proc.log
    rc = proc.stop()
    assert rc == 0
    for pid in pids:
        assert f"app shutdown in {pid}" in proc.log


def test_kill9_worker_is_replaced_while_the_other_keeps_serving(serve):
    proc = serve(APP, "--workers", "2")
    pids = startup_pids(proc)
    with socket.create_connection((proc.host, proc.port), timeout=5) as keep:
        survivor = pid_of(get(proc, sock=keep))
        (victim,) = pids - {survivor}
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: gone(victim))
        # Keep-alive requests on the survivor and new connections, while the
        # victim is replaced.
        for _ in range(30):
            assert pid_of(get(proc, sock=keep)) == survivor
            assert pid_of(get(proc)) in pids | children(proc.proc.pid)
    proc.wait_log(rf"Worker {victim} died: killed by signal 9 \(SIGKILL\)")
    m = proc.wait_log(r"Worker (\d+) serving", timeout=10)[0]
    new = int(m.group(1))
    assert new not in pids
    wait_until(lambda: children(proc.proc.pid) == {survivor, new})
    seen = {pid_of(get(proc)) for _ in range(200)}
    assert seen == {survivor, new}


def test_sighup_rolling_restart_under_load_fails_no_request(serve, tmp_path):
    version = tmp_path / "version"
    version.write_text("v1")
    proc = serve(APP, "--workers", "2", env={"WORKERS_APP_VERSION_FILE": str(version)})
    old = startup_pids(proc)
    loop = ClientLoop(proc)
    t0 = time.monotonic()
    loop.start()
    try:
        time.sleep(0.3)
        version.write_text("v2")
        proc.send_signal(signal.SIGHUP)
        proc.wait_log(r"Rolling restart done", timeout=15)
        wait_until(lambda: children(proc.proc.pid).isdisjoint(old), timeout=10)
        n = len(loop.pids)
        wait_until(lambda: len(loop.pids) > n + 20)
        time.sleep(max(0.0, 2.0 - (time.monotonic() - t0)))  # 2 s of load at least
    finally:
        loop.stop()
    assert loop.failures == []
    new = children(proc.proc.pid)
    assert len(new) == 2 and new.isdisjoint(old)
    assert set(loop.pids[-10:]) <= new
    # The new workers imported the app anew: the code change is picked up.
    assert loop.versions[0] == "v1" and set(loop.versions[-10:]) == {"v2"}


def test_sigterm_completes_the_request_in_flight_and_exits_0(serve):
    proc = serve(APP, "--workers", "2")
    pids = startup_pids(proc)
    result: list = []
    client = threading.Thread(target=lambda: result.append(get(proc, "/slow?s=1")))
    client.start()
    proc.wait_log(r"app startup")  # (already there) the request is on its way:
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    client.join(10)
    assert result and pid_of(result[0]) in pids
    assert proc.wait(15) == 0
    assert "All workers stopped" in proc.log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_while_a_worker_waits_for_executor_threads_ends_by_it(serve, sig):
    """As one server does (tests/test_cli.py): the stop is over but a
    worker's executor thread runs on (60 s); the user signals again: the
    worker ends by the signal, and so does the supervisor, not with exit
    status 1 and the worker reported as failed."""
    proc = serve("tests.apps.slow:app", "--workers", "1")
    assert httpx.get(proc.url("/?thread=60")).text == "started;finished"
    proc.send_signal(sig)
    proc.wait_log("Waiting for executor threads to finish")
    proc.send_signal(sig)
    proc.expected_exit = -sig
    assert proc.wait(timeout=20) == -sig, proc.log_tail()
    assert "Exiting now: executor threads still running" in proc.log
    assert "Traceback" not in proc.log


def test_ttin_and_ttou_add_and_remove_a_worker(serve):
    proc = serve(APP, "--workers", "1")
    (first,) = startup_pids(proc)
    proc.send_signal(signal.SIGTTIN)
    m = proc.wait_log(r"Worker (\d+) serving", timeout=10)[0]
    added = int(m.group(1))
    assert children(proc.proc.pid) == {first, added}
    proc.send_signal(signal.SIGTTOU)
    proc.wait_log(r"Worker \d+ stopped \(exit status 0\)", timeout=10)
    wait_until(lambda: len(children(proc.proc.pid)) == 1)
    (left,) = children(proc.proc.pid)
    assert {pid_of(get(proc)) for _ in range(5)} == {left}
    # The last worker stays.
    proc.send_signal(signal.SIGTTOU)
    proc.wait_log(r"keeping the last worker")
    assert children(proc.proc.pid) == {left}


def test_max_requests_replaces_the_worker_without_failures(serve):
    proc = serve(APP, "--workers", "1", "--max-requests", "5", "--max-requests-jitter", "3")
    (first,) = startup_pids(proc)
    loop = ClientLoop(proc)
    loop.start()
    try:
        proc.wait_log(rf"Worker {first} reached --max-requests", timeout=10)
        proc.wait_log(rf"Worker {first} stopped \(exit status 0\)", timeout=10)
    finally:
        loop.stop()
    assert loop.failures == []
    assert loop.pids[0] == first and loop.pids[-1] != first
    assert loop.pids.count(first) >= 5


def test_unix_socket_with_two_workers(serve, tmp_path):
    path = str(tmp_path / "w.sock")
    proc = serve(APP, "--workers", "2", "-u", path, port=False)
    pids = startup_pids(proc)
    assert f"Listening on unix socket {path}" in proc.log
    seen = {pid_of(get(proc, unix=path)) for _ in range(200)}
    assert seen == pids


def test_every_endpoint_kind_is_bound_once_and_shared(serve, tmp_path):
    path = str(tmp_path / "e.sock")
    inherited = socket.socket()
    inherited.bind(("127.0.0.1", 0))
    inherited.listen()
    with inherited:
        fd = inherited.fileno()
        proc = serve(APP, "--workers", "2", "--fd", str(fd), "-e", f"unix:{path}",
                     "-e", "tcp:0:interface=127.0.0.1", pass_fds=(fd,), listen=4)
        pids = startup_pids(proc)
        ports = [int(p) for p in re.findall(r"Listening on TCP address [\d.]+:(\d+)", proc.log)]
        assert inherited.getsockname()[1] in ports and len(ports) == 3
        for port in ports:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                assert pid_of(get(proc, sock=s)) in pids
        assert pid_of(get(proc, unix=path)) in pids


def test_blocked_worker_misses_heartbeats_and_is_replaced(serve):
    proc = serve(APP, "--workers", "1", "--worker-healthcheck-timeout", "0.5")
    (first,) = startup_pids(proc)
    with socket.create_connection((proc.host, proc.port), timeout=10) as s:
        s.sendall(b"GET /block?s=30 HTTP/1.1\r\nHost: t\r\n\r\n")
        proc.wait_log(rf"Worker {first} sent no heartbeat for [\d.]+ s: killing it \(SIGKILL\)",
                      timeout=10)
    proc.wait_log(rf"Worker {first} died: killed by signal 9 \(SIGKILL\)")
    proc.wait_log(r"Worker \d+ serving", timeout=10)
    assert pid_of(get(proc)) != first


def test_workers_exit_when_the_supervisor_is_killed(serve):
    proc = serve(APP, "--workers", "2")
    pids = startup_pids(proc)
    proc.expected_exit = None
    proc.proc.kill()
    proc.wait()
    # Orphans notice the closed control socket and drain.
    wait_until(lambda: all(gone(p) for p in pids), timeout=10)
    assert "Supervisor gone: shutting down" in proc.log


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "cdaphne", *argv], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=20,
                          stdin=subprocess.DEVNULL)


def test_bad_worker_values_are_one_clear_line():
    for argv, env, needle in [
        (["--workers", "0"], {}, "workers must be at least 1"),
        (["--max-requests", "5"], {}, "needs workers"),
        (["--workers", "2", "--worker-healthcheck-timeout", "0"], {},
         "worker_healthcheck_timeout"),
        ([], {"WEB_CONCURRENCY": "many"}, "WEB_CONCURRENCY"),
    ]:
        result = run_cli("-p", "0", *argv, APP, env=env)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], result.stderr


def test_web_concurrency_sets_the_default_worker_count(serve):
    proc = serve(APP, env={"WEB_CONCURRENCY": "2"})
    assert len(startup_pids(proc)) == 2


def test_a_worker_that_cannot_boot_stops_the_supervisor():
    # Regression: every worker printed the import error (and the supervisor
    # a line per worker it stopped): now the supervisor says it once.
    result = run_cli("-p", "0", "--workers", "4", "tests.apps.no_such_module:app")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cdaphne: error: a worker failed to boot: ")
    assert 'Could not import module "tests.apps.no_such_module"' in lines[0]


def test_an_app_that_raises_at_import_is_reported_once(tmp_path):
    (tmp_path / "broken_app.py").write_text("raise RuntimeError('no database URL')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    result = run_cli("-p", "0", "--workers", "3", "broken_app:app", env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        'cdaphne: error: a worker failed to boot: Error importing "broken_app": '
        "RuntimeError: no database URL"
    ], result.stderr


def test_a_lifespan_startup_failure_is_reported_once():
    result = run_cli("-p", "0", "--workers", "3", "tests.apps.lifespan:startup_fails")
    assert result.returncode == 3  # as one server
    assert result.stderr.strip().splitlines() == [
        "cdaphne: error: a worker failed to boot: Application startup failed: database is down"
    ], result.stderr


def test_a_lifespan_startup_exception_is_reported_once_with_its_traceback():
    # Regression: each worker logged its own traceback before the
    # supervisor's one line; now the line comes once, with the first
    # failing worker's traceback under it.
    result = run_cli("-p", "0", "--workers", "3", "--lifespan", "on",
                     "tests.apps.lifespan:startup_raises")
    assert result.returncode == 3  # as one server
    lines = result.stderr.strip().splitlines()
    assert lines[0] == ("cdaphne: error: a worker failed to boot: Application startup failed: "
                        "RuntimeError: cannot connect to the database"), result.stderr
    assert lines[1] == "Traceback (most recent call last):", result.stderr
    assert result.stderr.count("Traceback") == 1, result.stderr
    assert lines[-1] == "RuntimeError: cannot connect to the database", result.stderr


def test_a_replacement_that_cannot_boot_is_reported_by_the_supervisor(serve, tmp_path):
    # A rolling restart after a broken deploy: the old workers keep serving
    # and the supervisor's log says why the new one failed (the worker no
    # longer prints it itself).
    module = tmp_path / "deploy_app.py"
    module.write_text("from tests.apps.workers import app  # noqa: F401\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = serve("deploy_app:app", "--workers", "2", env=env)
    old = startup_pids(proc)
    module.write_text("raise RuntimeError('broken deploy')\n")
    proc.send_signal(signal.SIGHUP)
    m = proc.wait_log(r"Worker \d+ failed to boot: (.*); keeping worker (\d+)", timeout=15)[0]
    assert m.group(1) == 'Error importing "deploy_app": RuntimeError: broken deploy'
    assert int(m.group(2)) in old
    assert proc.log.count("broken deploy") == 1, proc.log_tail()
    assert children(proc.proc.pid) == old
    get(proc)


# ---- the channel layer across workers ----------------------------------------

def chat_members(proc: ServerProcess, per_worker: int = 2, tries: int = 60):
    """WebSockets to the chat room until each worker has `per_worker` of them."""
    import websocket

    members: dict[int, list] = {}
    for _ in range(tries):
        ws = websocket.create_connection(proc.ws_url("/"), timeout=5)
        _, pid, channel = ws.recv().split()
        members.setdefault(int(pid), []).append((ws, channel))
        if len(members) == 2 and all(len(m) >= per_worker for m in members.values()):
            break
    return members


def test_chat_room_members_on_different_workers_get_every_message(serve):
    proc = serve("tests.apps.workers_chat:app", "--workers", "2")
    members = chat_members(proc)
    try:
        assert set(members) == startup_pids(proc)
        everyone = [m for ms in members.values() for m in ms]
        for i, (ws, _) in enumerate(everyone):
            ws.send(f"say from-{i}")
        expected = {f"from-{i}" for i in range(len(everyone))}
        for ws, _ in everyone:
            assert {ws.recv() for _ in expected} == expected
        # A send() to a channel of the other worker.
        (a, b) = members.values()
        a[0][0].send(f"dm {b[0][1]} psst")
        assert b[0][0].recv() == "psst"
        b[1][0].send(f"dm {a[1][1]} back")
        assert a[1][0].recv() == "back"
    finally:
        for ms in members.values():
            for ws, _ in ms:
                ws.close()


def test_hub_routes_group_sends_to_subscribed_workers_and_sends_by_pid():
    """The supervisor's routing on real socketpairs: subscriptions, lazy
    unsubscription, sends by the pid in a new_channel() name and their
    answers, flush, a dead worker's subscriptions dropped and the requests
    waiting for it answered."""
    from cdaphne.supervisors import bus

    hub = bus.Hub(lambda end, want: None)
    pairs = {pid: socket.socketpair() for pid in (101, 102, 103)}
    ends = {pid: hub.add(pid, p[0]) for pid, p in pairs.items()}

    def post(pid: int, data: bytes) -> None:
        pairs[pid][1].sendall(data)
        assert hub.on_readable(ends[pid])

    def got(pid: int) -> list:
        sock = pairs[pid][1]
        sock.setblocking(False)
        buf = bytearray()
        try:
            while chunk := sock.recv(65536):
                buf += chunk
        except BlockingIOError:
            pass
        return [(op, key, payload) for op, _, key, payload, _ in bus.split_frames(buf)]

    post(101, bus.frame(bus.SUB, b"default", b"room"))
    post(102, bus.frame(bus.SUB, b"default", b"room"))
    post(103, bus.frame(bus.SUB, b"other", b"room"))  # Another layer alias.
    post(101, bus.frame(bus.GSEND, b"default", b"room", b"m1"))
    assert got(101) == [] and got(103) == []
    assert got(102) == [(bus.GSEND, b"room", b"m1")]
    post(102, bus.frame(bus.UNSUB, b"default", b"room"))
    post(101, bus.frame(bus.GSEND, b"default", b"room", b"m2"))
    assert got(102) == []
    # send(): to the worker in the name; its answer goes back to the sender.
    dm = b"specific.inmemory!w103.ab12"
    post(101, bus.frame(bus.SEND, b"default", dm, bus.REQ.pack(101, 7) + b"m3"))
    assert got(103) == [(bus.SEND, dm, bus.REQ.pack(101, 7) + b"m3")]
    assert got(101) == []
    post(103, bus.frame(bus.REPLY, b"default", b"", bus.STATUS.pack(101, 7, bus.FULL)))
    assert got(101) == [(bus.REPLY, b"", bus.STATUS.pack(101, 7, bus.FULL))]
    post(102, bus.frame(bus.SUB, b"default", b"room"))
    hub.remove(101)
    assert all(ends[101] not in e for e in hub.groups.values())
    # The hub answers for a worker that is gone...
    lost = b"specific.inmemory!w101.cd34"
    post(102, bus.frame(bus.SEND, b"default", lost, bus.REQ.pack(102, 8) + b"lost"))
    assert got(102) == [(bus.REPLY, b"", bus.STATUS.pack(102, 8, bus.OK))]
    assert hub.groups == {(b"default", b"room"): {ends[102]}, (b"other", b"room"): {ends[103]}}
    # ... and for one that goes while the request waits for it.
    post(102, bus.frame(bus.FLUSH, b"default", b"", bus.REQ.pack(102, 9)))
    assert got(103) == [(bus.FLUSH, b"", bus.REQ.pack(102, 9))]
    assert got(102) == []
    hub.remove(103)
    assert got(102) == [(bus.REPLY, b"", bus.STATUS.pack(102, 9, bus.OK))]
    assert hub.pending == {}
    hub.remove(102)
    for _, b in pairs.values():
        b.close()


def connect_on_other_worker(proc: ServerProcess, path: str, pid: int, tries: int = 60):
    """A WebSocket on `path` served by a worker other than `pid`."""
    import websocket

    for _ in range(tries):
        ws = websocket.create_connection(proc.ws_url(path), timeout=5)
        _, owner, channel = ws.recv().split()
        if int(owner) != pid:
            return ws, channel
        ws.close()
    raise AssertionError(f"no connection to {path} landed off worker {pid}")


def test_send_to_a_full_channel_of_another_worker_raises_channel_full(serve):
    """Capacity (a channel_capacity pattern here) is applied by the worker
    that owns the channel, and the sender on the other worker gets
    ChannelFull, as with one process."""
    import websocket

    layer = '{"capacity": 100, "channel_capacity": {"mute.*": 3}}'
    proc = serve("tests.apps.workers_chat:app", "--workers", "2",
                 env={"WORKERS_CHAT_LAYER": layer})
    sender = websocket.create_connection(proc.ws_url("/"), timeout=5)
    _, pid, _ = sender.recv().split()
    mute, channel = connect_on_other_worker(proc, "/mute", int(pid))
    try:
        answers = []
        for i in range(5):
            sender.send(f"try {channel} m{i}")
            answers.append(sender.recv())
        assert answers == ["sent"] * 3 + ["full"] * 2
        # The consumer starts reading: the first three arrived, in order.
        mute.send("read")
        assert [mute.recv() for _ in range(3)] == ["m0", "m1", "m2"]
        sender.send(f"try {channel} m5")
        assert sender.recv() == "sent"
        assert mute.recv() == "m5"
    finally:
        sender.close()
        mute.close()


def test_expiry_frees_a_full_channel_of_another_worker(serve):
    import websocket

    layer = '{"expiry": 1, "channel_capacity": {"mute.*": 2}}'
    proc = serve("tests.apps.workers_chat:app", "--workers", "2",
                 env={"WORKERS_CHAT_LAYER": layer})
    sender = websocket.create_connection(proc.ws_url("/"), timeout=5)
    _, pid, _ = sender.recv().split()
    mute, channel = connect_on_other_worker(proc, "/mute", int(pid))
    try:
        for text, answer in [("old0", "sent"), ("old1", "sent"), ("old2", "full")]:
            sender.send(f"try {channel} {text}")
            assert sender.recv() == answer
        time.sleep(1.5)  # The queued messages expire on the owner.
        sender.send(f"try {channel} new")
        assert sender.recv() == "sent"
        mute.send("read")
        assert mute.recv() == "new"
        mute.settimeout(0.5)
        try:
            extra = mute.recv()
        except websocket.WebSocketTimeoutException:
            extra = None
        assert extra is None
    finally:
        sender.close()
        mute.close()


def test_group_send_skips_a_full_member_on_another_worker_silently(serve):
    """group_send stays fire-and-forget: a full member misses messages, the
    sender never sees ChannelFull and the other members get everything."""

    layer = '{"channel_capacity": {"mute.*": 2}}'
    proc = serve("tests.apps.workers_chat:app", "--workers", "2",
                 env={"WORKERS_CHAT_LAYER": layer})
    members = chat_members(proc)
    (a, b) = members.values()
    sender_pid = next(pid for pid, ms in members.items() if ms is a)
    mute, _ = connect_on_other_worker(proc, "/mute", sender_pid)
    try:
        for i in range(6):
            a[0][0].send(f"say g{i}")
        expected = [f"g{i}" for i in range(6)]
        for ws, _ in a + b:
            assert [ws.recv() for _ in expected] == expected
        # The sender's connection is still open: no ChannelFull killed it.
        a[0][0].send("say after")
        assert a[0][0].recv() == "after"
        mute.send("read")
        assert [mute.recv() for _ in range(2)] == ["g0", "g1"]
    finally:
        mute.close()
        for ms in members.values():
            for ws, _ in ms:
                ws.close()


def test_flush_empties_the_channels_and_groups_of_every_worker(serve):
    import websocket

    proc = serve("tests.apps.workers_chat:app", "--workers", "2")
    members = chat_members(proc, per_worker=1)
    (a, b) = members.values()
    a_pid = next(pid for pid, ms in members.items() if ms is a)
    mute, channel = connect_on_other_worker(proc, "/mute", a_pid)
    try:
        a[0][0].send(f"try {channel} before")
        assert a[0][0].recv() == "sent"
        a[0][0].send("flush")
        assert a[0][0].recv() == "flushed"
        # The other worker's queue is empty and its members left the room.
        a[0][0].send(f"try {channel} after")
        assert a[0][0].recv() == "sent"
        mute.send("read")
        assert mute.recv() == "after"
        a[0][0].send("say nobody")
        b[0][0].settimeout(0.5)
        try:
            got = b[0][0].recv()
        except websocket.WebSocketTimeoutException:
            got = None
        assert got is None
    finally:
        mute.close()
        for ms in members.values():
            for ws, _ in ms:
                ws.close()


# ---- accepting on the shared socket --------------------------------------------

def pids_of_simultaneous_connections(proc: ServerProcess, n: int) -> list[int]:
    """Open n keep-alive connections at once, then ask each for its pid."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.setblocking(False)
            s.connect_ex((proc.host, proc.port))
        for s in socks:
            s.setblocking(True)
            s.settimeout(10)
        return [pid_of(get(proc, sock=s, timeout=10)) for s in socks]
    finally:
        for s in socks:
            s.close()


def test_a_burst_of_connections_is_spread_over_the_workers(serve):
    """wrk's way: 40 connections at once on the shared socket.  Without the
    balance the first worker awake accepted nearly all of them."""
    proc = serve(APP, "--workers", "2")
    pids = startup_pids(proc)
    got = pids_of_simultaneous_connections(proc, 40)
    counts = {pid: got.count(pid) for pid in pids}
    assert min(counts.values()) >= 5, counts


def test_a_blocked_worker_does_not_hold_up_accepting(serve):
    """A worker whose loop is blocked keeps a low count; the other still
    accepts every new connection (after letting it try)."""
    proc = serve(APP, "--workers", "2")
    pids = startup_pids(proc)
    with socket.create_connection((proc.host, proc.port), timeout=10) as keep:
        # Three keep-alive connections on one worker make it the busier one.
        busy = pid_of(get(proc, sock=keep))
        extra: list[socket.socket] = []
        blocker = None
        for _ in range(100):
            s = socket.create_connection((proc.host, proc.port), timeout=10)
            pid = pid_of(get(proc, sock=s))
            if pid == busy and len(extra) < 3:
                extra.append(s)
            elif pid != busy and blocker is None:
                blocker = s
            else:
                s.close()
            if len(extra) == 3 and blocker is not None:
                break
        assert blocker is not None and len(extra) == 3
        (other,) = pids - {busy}
        blocker.sendall(b"GET /block?s=3 HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.2)
        try:
            served = {pid_of(get(proc, timeout=10)) for _ in range(30)}
        finally:
            for s in extra:
                s.close()
        assert served == {busy}
        assert pid_of(Reader(blocker, 10).response()) == other
        blocker.close()
