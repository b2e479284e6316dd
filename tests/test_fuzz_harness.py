"""The fuzz harness (fuzz/harness.py) must not report findings the server
did not cause. It runs in a subprocess, as in the fuzz driver: one real
cdaphne server per process on cdaphne's loop, raw-socket clients."""

from __future__ import annotations

import base64
import os
import socket
import struct
import subprocess
import sys
import textwrap
import time

from .apps.cancelled_sends import SIZE
from .serverproc import ROOT, start_server

CORPUS = ROOT / "fuzz" / "corpus"


# What harness ops call on a session, for the programs below that run ops
# without a server: fail() and step().
STUB_SESSION = """
import asyncio as _asyncio


class StubSession:
    def __init__(self):
        self.failures = []

    def fail(self, msg):
        self.failures.append(msg)

    async def step(self, n=1):
        for _ in range(n):
            await _asyncio.sleep(0)
"""


def run_harness(code: str) -> subprocess.CompletedProcess[str]:
    prog = "import sys\nsys.path.insert(0, 'fuzz')\nimport harness\n" + STUB_SESSION
    prog += textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", prog], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_websocket_output_over_4mib_is_checked_whole() -> None:
    # Six cancelled 1 MiB sends: about 6.3 MB of well-formed frames reach
    # the client. The harness used to keep only the first MiB of what it
    # read once it passed 4 MiB, then parsed payload bytes as headers
    # ("server frame with RSV bits 0x79").
    for name in ("regress-ws-frames-over-4mib", "regress-ws-cancelled-big-sends"):
        data = (CORPUS / "websocket" / name).read_bytes()
        r = run_harness(f"harness.one_input_websocket({data!r})\n")
        assert r.returncode == 0, f"{name}: {r.stderr[-2000:]}"


def test_cancelled_big_sends_reach_the_client_intact() -> None:
    # The server side of the finding, read raw: sends cancelled while the
    # output is above the high-water mark still go out whole and in order.
    proc = start_server("tests.apps.cancelled_sends:app")
    try:
        sock = socket.create_connection(("127.0.0.1", proc.port), timeout=10)
        key = base64.b64encode(os.urandom(16))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key +
                     b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        time.sleep(0.3)  # Let the output pass the high-water mark.
        buf = bytearray()

        def exact(n: int) -> bytes:
            while len(buf) < n:
                chunk = sock.recv(1 << 20)
                assert chunk, "closed early"
                buf.extend(chunk)
            out = bytes(buf[:n])
            del buf[:n]
            return out

        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(4096)
            assert chunk, "closed during handshake"
            buf.extend(chunk)
        head_end = buf.index(b"\r\n\r\n") + 4
        assert buf.startswith(b"HTTP/1.1 101 "), bytes(buf[:80])
        del buf[:head_end]
        frames = []
        while not frames or frames[-1][0] != 0x88:
            b0, b1 = exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", exact(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", exact(8))[0]
            assert not b1 & 0x80, "masked server frame"
            frames.append((b0, exact(n)))
        want = []
        for i in range(6):
            want += [(0x82, SIZE), (0x81, f"t{i}".encode())]
        got = [(b0, len(p) if b0 == 0x82 else p) for b0, p in frames[:-1]]
        assert got == want
        assert all(p == b"y" * SIZE for b0, p in frames if b0 == 0x82)
        assert frames[-1] == (0x88, struct.pack("!H", 1000))
        sock.sendall(b"\x88\x82\x00\x00\x00\x00\x03\xe8")  # Close 1000, zero mask.
        sock.close()
    finally:
        code = proc.stop()
    assert code == 0, proc.log_tail()


def test_frame_scanner_still_finds_bad_frames() -> None:
    # The streaming check must catch what the whole-buffer parse caught,
    # however the bytes are split between reads.
    r = run_harness("""
        import struct

        def scan(stream, step):
            s = harness.FrameScanner()
            s.active = True
            for i in range(0, len(stream), step):
                s.feed(stream[i:i + step])
            return s.failure

        good = (b"\\x82\\x7f" + struct.pack("!Q", 70000) + b"y" * 70000
                + b"\\x81\\x05hello" + b"\\x89\\x00")
        close = b"\\x88\\x02\\x03\\xe8"
        bad = {
            b"\\xf2\\x00": "RSV bits",
            b"\\x82\\x81abcdx": "masked",
            b"\\x83\\x00": "opcode 3",
            b"\\x88\\x02\\x03\\xed": "close code 1005",
            b"\\x88\\x01\\x03": "close frame payload of 1 bytes",
            b"\\x89\\x7e\\x00\\x80" + b"p" * 128: "control frame 9 of 128",
            b"\\x88\\x04\\x03\\xe8\\xff\\xfe": "not UTF-8",
        }
        # Nothing may follow the server's close frame.
        bad[close + b"\\x81\\x00"] = "after its close frame"
        for step in (1, 3, 4096, 1 << 20):
            assert scan(good + close, step) is None, step
            for tail, want in bad.items():
                got = scan(good + tail + good + close, step)
                assert got is not None and want in got, (step, tail, got)
        print("ok")
    """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_head_target_calls_the_app_on_a_loaded_machine() -> None:
    # Each loop turn is followed by a 50 ms stall, as when the process is
    # off the CPU. The head target's servers had 30 ms header timeouts, so
    # the head timer closed the connection before its (buffered) request was
    # read: "the app was not called for a valid request" (or handshake).
    for name in ("regress-head-app-called-under-load", "regress-head-ws-app-called-under-load"):
        data = (CORPUS / "head" / name).read_bytes()
        r = run_harness(f"""
            import time
            from cdaphne.loop import LibuvSelector

            select = LibuvSelector.select

            def stalled(self, timeout=None):
                out = select(self, timeout)
                time.sleep(0.05)
                return out

            LibuvSelector.select = stalled
            harness.one_input_head({data!r})
        """)
        assert r.returncode == 0, f"{name}: {r.stderr[-2000:]}"


def test_executor_ops_check_what_stock_asyncio_does() -> None:
    # harness.executor_op's checks (work cancelled by shutdown, a pool broken
    # by its initializer, a function's result or exception, an executor of
    # another kind) hold on stock asyncio's loop as on ours, for every op
    # byte, and catch a loop that hands back a wrong result.
    r = run_harness("""
        import asyncio

        from cdaphne.loop import new_event_loop

        def failures(make, lie=False):
            harness.LOOP = lp = make()
            if lie:
                real = lp.run_in_executor

                def run_in_executor(ex, fn, *args):
                    return real(ex, lambda: fn(*args) + 1)
                lp.run_in_executor = run_in_executor
            sess = StubSession()
            for b in range(32):
                lp.run_until_complete(harness.executor_op(sess, b))
            lp.close()
            return sess.failures

        assert failures(asyncio.new_event_loop) == []
        assert failures(new_event_loop) == []
        lied = failures(new_event_loop, lie=True)
        # The first work of kind 0's 8, the 4 returning functions of kind 2,
        # and kind 3's 2 that return on a thread (3 and 11).
        assert sum("cancelled by shutdown" in f for f in lied) == 8, lied
        assert sum("run_in_executor of" in f for f in lied) == 4, lied
        assert sum("another kind" in f for f in lied) == 2, lied
        assert len(lied) == 14, lied
        print("ok")
    """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_executor_ops_leave_the_loop_under_the_default_policy() -> None:
    # csrc/policy.c under harness.executor_op, as the fuzz targets run it:
    # the loop's thread is under SCHED_BATCH while a hop is out and back
    # under the default policy once it sleeps after each op byte's hops
    # (results, exceptions, cancels, broken pools, other executors); and
    # Session.settle's check sees a thread left under SCHED_BATCH.
    r = run_harness("""
        import asyncio
        import os
        import threading
        import time

        def default_policy(seconds):
            check = harness.Session.policy_default(None, time.monotonic() + seconds)
            return lp.run_until_complete(check)

        assert harness.POLICY_CHECKED
        lp = harness.loop()
        tid = threading.get_native_id()
        lp.run_until_complete(asyncio.sleep(0.01))  # the thread that polls is the loop's
        during = lp.run_until_complete(lp.run_in_executor(None, os.sched_getscheduler, tid))
        assert during == os.SCHED_BATCH, during
        assert default_policy(3)
        sess = StubSession()
        for b in range(32):
            lp.run_until_complete(harness.executor_op(sess, b))
            assert default_policy(3), b
        assert sess.failures == [], sess.failures
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        assert not default_policy(0.05)
        print("ok")
    """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_introspect_ops_check_what_stock_asyncio_does() -> None:
    # harness.introspect_op's checks (loop._ready as a deque, the loop's
    # methods as functions, loop._scheduled edited with heapq, a future's
    # _cancel_message, a run_in_executor() future that refuses its outcome)
    # hold on stock asyncio's loop as on ours for every op byte, and each
    # catches a loop that gets its part wrong.
    r = run_harness("""
        import asyncio
        from collections import deque

        import seeds
        from cdaphne.loop import LibuvEventLoop, new_event_loop

        class Sess(StubSession):
            async def inst(self, d):
                d.u8()
                return None  # No app: a loop future only.

        def failures(make, kinds=range(5)):
            harness.LOOP = lp = make()
            sess = Sess()
            for b in range(32):
                if b % 5 in kinds:
                    lp.run_until_complete(harness.introspect_op(sess, harness.Data(b""), b))
            lp.close()
            return sess.failures

        def count(got, what):
            return sum(what in f for f in got)

        assert failures(asyncio.new_event_loop) == []
        assert failures(new_event_loop) == []
        # On ours the op's parts meet the C types (its checks of
        # LoopMethods' own names run on them).
        lp = new_event_loop()
        assert type(lp._ready).__name__ == "ReadyQueue"
        for name in harness.LOOP_METHODS:
            assert type(getattr(LibuvEventLoop, name)).__name__ == "loop_method", name
        lp.close()

        # Lies, each a loop that gets one part wrong:
        class LeftIsRight(deque):
            def appendleft(self, h):
                self.append(h)

        def misordered():
            lp = asyncio.new_event_loop()
            lp._ready = LeftIsRight()
            return lp

        lied = failures(misordered, [0])
        # Each of the 7 ready-queue ops: the ends and the order of what ran;
        # the 3 that pop: popleft() then takes another handle.
        assert count(lied, "after appendleft() and append()") == 7, lied
        assert count(lied, "ran as") == 7, lied
        assert count(lied, "_ready.popleft() gave") == 3, lied
        assert len(lied) == 17, lied

        class Drops(LibuvEventLoop):
            def call_soon(self, cb, *args, context=None):
                if getattr(cb, "__name__", None) == "append":
                    return asyncio.Handle(cb, args, self)  # never queued
                return super().call_soon(cb, *args, context=context)

        lied = failures(Drops, [0, 1])
        # The 7 ready-queue ops lose the handle call_soon() queued; the
        # call_soon op (b = 1) sees its unbound call do nothing.
        assert count(lied, "does not hold the handle call_soon() queued") == 7, lied
        assert count(lied, "ran as") == 7, lied
        assert count(lied, "Drops.call_soon(loop, ...) called unbound ran its callback 0") == 1
        assert len(lied) == 15, lied

        def early():
            lp = new_event_loop()
            call_at = lp.call_at
            lp.call_at = lambda when, *a, **kw: call_at(when and when - 0.004, *a, **kw)
            return lp

        lied = failures(early, [2])
        assert count(lied, "edited in loop._scheduled ran as") == 6, lied
        assert len(lied) == 6, lied

        class Deaf(asyncio.Future):
            def cancel(self, msg=None):
                return super().cancel()

        class DeafLoop(asyncio.SelectorEventLoop):
            def create_future(self):
                return Deaf(loop=self)

        lied = failures(DeafLoop, [3])
        # Of the 6 ops, 4 cancel with a message (read back wrong), and in
        # 2 of them it is what the waiting task, gather and await give.
        assert count(lied, "_cancel_message read, set, cancel(") == 4, lied
        assert count(lied, "cancelled with _cancel_message") == 2, lied
        assert len(lied) == 6, lied

        def silent():
            lp = new_event_loop()
            lp.call_exception_handler = lambda context: None
            return lp

        harness.REPORT_SECONDS = 0.2
        lied = failures(silent, [4])
        assert count(lied, "0 reports") == 6, lied
        assert len(lied) == 6, lied
        print("ok")
    """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_introspect_seed_reaches_receive_futures() -> None:
    # The seed's _cancel_message ops reach what a waiting receive()
    # yields on the real server (a RecvFuture), with no finding.
    r = run_harness("""
        import seeds

        seen = []
        real = harness.cancel_message_op

        async def spy(sess, fut, waiting, v):
            seen.append(type(fut).__name__)
            await real(sess, fut, waiting, v)

        harness.cancel_message_op = spy
        harness.one_input_http(seeds.http_seeds()["introspect"])
        assert seen.count("RecvFuture") == 6, seen
        print("ok")
    """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_read_hold_op_checks_the_held_connection() -> None:
    # harness.read_hold_op: a WebSocket peer that floods pings, or a TLS one
    # KeyUpdates, and does not read. Each of its seeds passes on the real
    # server (it stops reading, every answer comes in order once the client
    # reads, the peer leaving while held is seen), and each check fails
    # when the outcome differs: a pong lost or altered on its way to the
    # client, a TLS record lost, a server that reads on (a write buffer too
    # big for the flood), a peer that never leaves.
    r = run_harness("""
        import seeds

        hold = seeds.ws_hold_seeds()
        tls = seeds.tls_seeds()

        def failure(name, target=harness.one_input_websocket, inputs=hold):
            try:
                target(inputs[name])
            except harness.FuzzFailure as exc:
                return str(exc)
            return None

        for name in hold:
            assert failure(name) is None, (name, failure(name))
        for name in tls:
            assert failure(name, harness.one_input_tls, tls) is None, name

        # The first 27 bytes the TLS client reads after its flood (the
        # server's first KeyUpdate) never reach its TLS layer.
        shuffle, flood = harness.TLSClient.shuffle, harness.hold_flood
        lost = []

        async def flooded(*args):
            await flood(*args)
            lost.append(False)

        def lossy(self):
            self.conn.pump()
            if lost == [False] and self.conn.out:
                del self.conn.out[:27]
                lost[0] = True
            shuffle(self)

        harness.hold_flood, harness.TLSClient.shuffle = flooded, lossy
        got = failure("read-hold-answered", harness.one_input_tls, tls)
        assert got is not None and "the client's TLS failed" in got, got
        harness.hold_flood, harness.TLSClient.shuffle = flood, shuffle

        scan = harness.FrameScanner._one

        def spoiled(n, spoil):
            # FrameScanner._one spoiling the client's n-th pong once.
            done = []

            def one(self):
                got = scan(self)
                c = self.control
                if not done and c and len(c) == n and c[-1][0] == 10:
                    done.append(spoil(c))
                return got
            return one

        def lose(c):
            del c[-1]

        def alter(c):
            c[-1] = (10, c[-1][1][:4] + b"?" + c[-1][1][5:])

        for n, spoil, name in ((500, lose, "app-closes"), (700, alter, "client-closes")):
            harness.FrameScanner._one = spoiled(n, spoil)
            got = failure(f"read-hold-{name}")
            assert got is not None and f"pong {n - 1} of 5200 carries" in got, got
        harness.FrameScanner._one = scan

        # A new hold server whose write buffer the flood never passes.
        harness.SERVERS["ws-hold"].open = False
        harness.HOLD_SERVER["write_buffer_size"] = 1 << 30
        got = failure("read-hold-app-closes")
        assert got is not None and "it never stopped reading" in got, got

        harness.Conn.half_close = lambda self: None
        got = failure("read-hold-half-close")
        assert got is not None and "kept the connection of a peer that half-closed" in got, got
        print("ok")
    """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
