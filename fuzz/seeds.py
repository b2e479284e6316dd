"""Writes the seed corpora fuzz/corpus/<target>/ for fuzz/harness.py.

Each seed is a script in the harness's op language (see harness.py): the
encoders below emit, byte for byte, what the harness reads for an op.
Run `python fuzz/seeds.py` after changing the op language; libFuzzer's
own finds are merged into the same directories by `make fuzz`.
"""

from __future__ import annotations

import hashlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


class Enc:
    """Builds one input."""

    def __init__(self, *first: int) -> None:
        self.b = bytearray(first)

    def u8(self, *vals: int) -> Enc:
        self.b += bytes(vals)
        return self

    def blob(self, data: bytes) -> Enc:
        assert len(data) < 250, "the harness scales lengths >= 250"
        self.b.append(len(data))
        self.b += data
        return self

    def token(self, data: bytes) -> Enc:
        return self.blob(data).u8(1)

    # ---- ops shared by the targets (harness.client_op) ----
    def write(self, n: int = 0) -> Enc:
        return self.u8(0 if n else 1, 0, *([n] if n else []))

    def step(self, n: int = 1) -> Enc:
        return self.u8(2, 0, n - 1)

    def sleep(self, ms: int) -> Enc:
        return self.u8(3, 0, ms - 1)

    def eof(self) -> Enc:
        return self.u8(4, 0)

    def rst(self) -> Enc:
        return self.u8(5, 0)

    def cancel_task(self) -> Enc:
        return self.u8(6, 0, 0, 1)

    def close_listeners(self) -> Enc:
        return self.u8(7, 0, 0)

    def close_all(self) -> Enc:
        return self.u8(7, 0, 20)

    def timer(self, kind: int, *args: int) -> Enc:
        """A timer op (harness.Timers.op): 0 call_later, 1 cancel, 2 copy,
        3 move _when, 4 push a made one, 5 remove from the heap."""
        return self.u8(7, 0, 48, kind, *args)

    def when_timers(self, ops: bytes) -> Enc:
        """harness.when_timers: one op per byte (b % 5: 0 add, 1 change,
        2 cancel, 3 step, 4 sleep)."""
        return self.u8(7, 0, 112).blob(ops)

    def renew_loop(self) -> Enc:
        return self.u8(7, 0, 144)

    def executor(self, b: int) -> Enc:
        """harness.executor_op (b % 4: 0 queued work cancelled by the
        pool's shutdown, 1 a pool broken by its initializer, 2
        run_in_executor returning or raising, 3 an executor of another
        kind: its future plain (8) or not, done on a thread, cancelled
        first (16) or done in submit() (20); b >> 2 picks the variant,
        4 raising)."""
        assert b < 32
        return self.u8(7, 0, 148 + b)

    def introspect(self, b: int) -> Enc:
        """harness.introspect_op (b % 5: 0 loop._ready as a deque, 1 the
        loop's methods as functions, 2 loop._scheduled edited with heapq,
        3 a future's _cancel_message, then on a waiting receive()'s (its
        app byte follows), 4 a run_in_executor() future that cannot take
        its outcome; b // 5 picks the variant)."""
        assert b < 32
        return self.u8(7, 0, 180 + b, *([0] if b % 5 == 3 else []))

    def read_hold(self, b: int, count: int, fill: int = 0x70,
                  mask: bytes = b"\x11\x22\x33\x44") -> Enc:
        """harness.read_hold_op: a peer that pings (b & 16: sends TLS
        KeyUpdates) and does not read (b % 4: 0 reads again and the app
        closes, 1 reads again and closes first, 2 half-closes while held,
        3 resets; (b >> 2) % 4 the payload size, harness.HOLD_PAYLOADS),
        100 + 20 * count pings (an eighth as many KeyUpdates)."""
        assert b < 32 and len(mask) == 4
        return self.u8(7, 0, 212 + b, count, fill).u8(*mask)

    def bytes(self) -> bytes:
        return bytes(self.b)


# ---- HTTP ---------------------------------------------------------------------
# build_request: method index, target, version index, header ops, body.
GET, POST, HEAD = 0, 1, 2
V11, V10, V20 = 0, 3, 4


def request(e: Enc, method: int = GET, path: bytes = b"", version: int = V11,
            headers: list[list[int]] | None = None, body: bytes | None = None,
            chunks: list[int] | None = None, exts: list[list[int]] | None = None) -> Enc:
    """exts: per chunk, then for the last chunk, the bytes harness.chunk_ext
    reads (its selector first); none by default."""
    e.u8(8, 0, 0)  # op, client_op's conn byte, the conn
    e.u8(method).blob(path).u8(255).u8(version)
    hs = list(headers or [])
    if body is not None:
        hs.append([2] if chunks is not None else [1])
    e.u8(len(hs))
    for h in hs:
        e.u8(*h)
    if body is not None:
        e.blob(body)
        if chunks is not None:
            rest = len(body)
            ext = iter(exts or [])
            for k in chunks:
                if rest <= 0:
                    break
                e.u8(k, *next(ext, [0]))
                rest -= k
            e.u8(*next(ext, [0]))
    return e


def app(e: Enc, *action: int, blob: bytes | None = None, tail: tuple[int, ...] = ()) -> Enc:
    e.u8(11, 0, 0, 0, *action)
    if blob is not None:
        e.blob(blob)
    return e.u8(*tail)


def receive(e: Enc) -> Enc:
    return app(e, 0)


def receive_cancel(e: Enc, t: int = 0) -> Enc:
    return app(e, 3, t)


def start(e: Enc, status_idx: int = 0, headers: list[bytes] | None = None) -> Enc:
    """status index into the harness's list (0: 200, 7: 431, 2: 204)."""
    e.u8(11, 0, 0, 0, 4, status_idx, 2, len(headers or []))
    for h in headers or []:
        e.u8(*h)
    return e


def body(e: Enc, data: bytes, more: bool = False) -> Enc:
    return app(e, 6, blob=data, tail=(1 if more else 0,))


def http_seeds() -> dict[str, bytes]:
    seeds = {}

    def simple(variant: int, *reqargs, resp=True, **reqkw) -> Enc:
        e = Enc(variant)
        request(e, *reqargs, **reqkw).write().step(2)
        if resp:
            receive(e)
            start(e)
            body(e, b"hello")
            e.step(2)
        return e

    for v in range(3):
        seeds[f"get-v{v}"] = simple(v).bytes()
        seeds[f"head-v{v}"] = simple(v, HEAD).bytes()
        seeds[f"http10-v{v}"] = simple(v, version=V10).bytes()
    seeds["post-cl"] = simple(2, POST, body=b"a=1&b=2").bytes()
    seeds["post-chunked"] = simple(2, POST, body=b"0123456789abcdef", chunks=[3, 5, 8]).bytes()
    # Chunk extensions: a name, a quoted value, names, then on the last
    # chunk one just under the 16 KiB bound; one just over it (400).
    # Leading zeros in chunk sizes, under and over the framing bound.
    ext_chunks = [3, 5, 8]
    seeds["post-chunk-extensions"] = simple(
        2, POST, body=b"0123456789abcdef", chunks=ext_chunks,
        exts=[[8], [10, 5, *b"q v 1"], [11, 2], [12, 204]]).bytes()
    # Several extensions: ";a=b;c=d", a list of token and quoted values,
    # ";a=b" repeated to just under the bound; then just over it (400).
    ext_list = [15, 2, 1, *b"a", 1, 1, *b"b", 2, *b"cc", 2, 3, *b"x y", 1, *b"e", 0]
    seeds["post-chunk-extension-lists"] = simple(
        2, POST, body=b"0123456789abcdef", chunks=ext_chunks,
        exts=[[13], ext_list, [0], [16, 204]]).bytes()
    seeds["post-chunk-extension-lists-too-long"] = simple(
        2, POST, body=b"0123456789abcdef", chunks=ext_chunks,
        exts=[[13], [0], [16, 205]], resp=False).bytes()
    seeds["post-chunk-leading-zeros"] = simple(
        2, POST, body=b"0123456789abcdef", chunks=ext_chunks,
        exts=[[14, 3], [14, 212], [0], [14, 1]]).bytes()
    seeds["post-chunk-leading-zeros-too-many"] = simple(
        2, POST, body=b"0123456789abcdef", chunks=ext_chunks, exts=[[0], [14, 230]],
        resp=False).bytes()
    # The last chunk's size line past the bound, read whole (64 KiB reads)
    # and 7 bytes at a time: 400 either way, the app (which receives)
    # never sees the body end.
    for v in (2, 3):
        e = Enc(v)
        request(e, POST, body=b"0123456789abcdef", chunks=ext_chunks,
                exts=[[0], [0], [0], [14, 230]]).write().step(2)
        receive(e)
        seeds[f"post-last-chunk-leading-zeros-too-many-v{v}"] = e.step(2).bytes()
    seeds["post-chunk-extension-too-long"] = simple(
        2, POST, body=b"0123456789abcdef", chunks=ext_chunks, exts=[[7], [12, 205]],
        resp=False).bytes()
    e = Enc(2)
    request(e, POST, body=b"x" * 40).write(10).step().write(7).step().write()
    receive(e)
    start(e)
    body(e, b"one", more=True)
    body(e, b"two")
    seeds["post-split-streamed"] = e.step(2).bytes()
    e = Enc(2)
    request(e, POST, body=b"body!", headers=[[4]]).write().step()
    receive(e)
    start(e)
    body(e, b"")
    seeds["expect-continue"] = e.step(2).bytes()
    e = Enc(2)
    request(e)
    request(e, path=b"second")
    e.write().step(2)
    for _ in range(2):
        receive(e)
        start(e)
        body(e, b"k")
        app(e, 12)
        e.step(2)
    seeds["pipelined"] = e.bytes()
    e = Enc(2)
    request(e, POST, body=b"abcdef" * 5).write(70).step(4)
    receive(e)  # the first part of the body
    receive_cancel(e, 2)  # nothing to read: times out after 1 ms
    e.sleep(5).write().step(4)
    receive(e)  # must be the rest of the body
    start(e)
    body(e, b"ok")
    seeds["receive-cancelled"] = e.step(2).bytes()
    e = Enc(2).u8(8, 0, 0, GET).blob(b"").u8(255, V11, 1, 3, 0)  # Connection: close
    e.write().step()
    start(e, 7)
    body(e, b"x" * 20, more=True)
    body(e, b"")
    seeds["status-431-close-streamed"] = e.step(2).bytes()
    e = Enc(1)  # server name of 200 characters
    e.u8(8, 0, 0, GET).blob(b"").u8(255, V10, 1, 3, 1)  # HTTP/1.0 keep-alive
    e.write().step()
    start(e, 7)
    body(e, b"y" * 50)
    seeds["http10-keepalive-431"] = e.step(2).bytes()
    seeds["partial-head-timeout"] = Enc(2).u8(10, 0, 0).blob(b"GET / HTTP/1.1\r\nHo").write() \
        .sleep(25).sleep(25).bytes()
    seeds["rst-mid-body"] = Enc(0).u8(8, 0, 0, POST).blob(b"").u8(255, V11, 1, 1).blob(b"z" * 60) \
        .write(30).step().rst().step(2).bytes()
    seeds["eof-after-request"] = simple(2, resp=False).eof().step(2).bytes()
    # Half-close: the FIN after a whole request; the app reads on (the
    # disconnect comes at the FIN), answers anyway, and its answer goes out.
    e = simple(2, resp=False).eof().step(2)
    receive(e)
    receive(e)
    start(e)
    body(e, b"late")
    seeds["eof-after-request-answered"] = e.step(2).bytes()
    e = Enc(2)
    request(e)
    request(e, path=b"second")
    request(e, POST, body=b"abc")
    e.write().eof().step(2)
    for _ in range(3):
        receive(e)
        start(e)
        body(e, b"k")
        e.step(2)
    seeds["eof-after-pipelined"] = e.bytes()
    e = simple(2, resp=False)
    app(e, 11)
    seeds["app-raises"] = e.step(3).bytes()
    e = simple(2, resp=False)
    e.cancel_task()
    seeds["task-cancelled"] = e.step(3).bytes()
    seeds["bad-version"] = simple(2, version=V20, resp=False).bytes()
    seeds["many-headers"] = Enc(1).u8(8, 0, 0, GET).blob(b"").u8(255, V11, 1, 8, 200).write() \
        .step(2).bytes()
    seeds["long-header"] = Enc(1).u8(8, 0, 0, GET).blob(b"").u8(255, V11, 1, 7, 40).write() \
        .step(2).bytes()
    seeds["raw-garbage"] = Enc(2).u8(10, 0, 0).blob(b"\x00\xffGARBAGE\r\n\r\n").write().step(2) \
        .bytes()
    e = simple(2)
    e.close_listeners().step(2)
    seeds["close-listeners"] = e.bytes()
    e = simple(2, resp=False)
    e.close_all().step(2)
    seeds["close-all"] = e.bytes()
    e = simple(2)
    for delay in (16, 0, 20, 40, 17):  # 0, -16, 4, 24 and 1 ms
        e.timer(0, delay)
    e.timer(1, 0).timer(2, 1, 1).timer(2, 2, 0).timer(3, 3, 9).timer(3, 2, 2)
    e.timer(4, 0, 1, 3).timer(4, 1, 0, 5).timer(5, 4).timer(3, 6, 8)
    e.step(2).sleep(30).step(2)
    seeds["timers"] = e.bytes()
    e = simple(2)
    for b in (0, 4, 13, 1, 5, 2, 6, 3, 7, 11, 15, 19, 27, 23, 31):
        e.executor(b)
    seeds["executor"] = e.step(2).bytes()
    e = simple(2, resp=False)
    receive(e)  # The next one waits: on a RecvFuture.
    for b in range(32):
        e.introspect(b)
        if b % 5 == 3:
            e.step(4).step(4)  # The app's turn with a waiting receive().
    seeds["introspect"] = e.step(2).bytes()
    e = Enc(1)
    for _ in range(3):
        e.u8(12, 0, 0)  # new connection
    request(e)
    e.write().step(2)
    seeds["three-conns"] = e.bytes()
    seeds.update(http_thread_seeds())
    small_read(seeds, "post-chunked", "post-chunk-extensions", "pipelined",
               "post-split-streamed", "expect-continue", "partial-head-timeout")
    return seeds


# Timers made, read (1), lowered (11, 41), made ints (21), their _when
# deleted and put back (31), cancelled (2, 7), stepped and slept past.
TIMER_OPS = bytes([0, 5, 40, 80, 1, 11, 21, 31, 41, 3, 2, 160, 6, 16, 26, 36, 7, 4, 3, 44])


def http_thread_seeds() -> dict[str, bytes]:
    """receive()/send() from another thread (harness.app_thread_action:
    248 does a receive or send through a thread, 249 awaits one in a
    thread), loop timers, and a loop closed after the input."""
    seeds = {}
    e = Enc(2)
    request(e, POST, body=b"through a thread").write().step(2)
    app(e, 248, 0)  # receive() called in a thread, awaited on the loop
    app(e, 248, 4, 0, 2, 0)  # send(http.response.start) the same way
    app(e, 248, 6, blob=b"from a thread", tail=(0,))
    seeds["off-thread"] = e.step(2).bytes()
    for how in range(4):
        e = Enc(2)
        request(e).write().step(2)
        app(e, 249, how)
        receive(e)
        start(e)
        body(e, b"after")
        seeds[f"awaited-off-thread-{how}"] = e.step(2).bytes()
    # 250: receive()/send()'s awaitable driven by hand (harness.drive_waiter).
    for how in (1, 3, 9, 0, 2):
        e = Enc(2)
        request(e, POST, body=b"by hand", chunks=[3, 4]).write(80).step(2)
        app(e, 250, how)
        if how in (0, 2):
            start(e)
            app(e, 250, how)
        else:
            e.write().step(2)
            app(e, 250, how | 8)
        receive(e)
        seeds[f"waiter-by-hand-{how}"] = e.step(2).bytes()
    e = Enc(2)
    request(e).write().step(2).when_timers(TIMER_OPS)
    receive(e)
    start(e)
    seeds["when-timers"] = e.step(2).bytes()
    e = Enc(0)
    request(e).write().step(2)
    receive(e)
    seeds["renew-loop"] = e.renew_loop().step(2).bytes()
    # The variant-1 server refuses a body slower than --min-body-rate once
    # its app waited 10 ms (http1.c body_rate_on_timer).
    e = Enc(1)
    request(e, POST, body=b"slow", chunks=[1, 3]).write(75).step(2)
    receive(e)
    receive(e)  # waits for the rest
    seeds["slow-body"] = e.sleep(20).sleep(20).write().step(2).bytes()
    return seeds


def small_read(seeds: dict[str, bytes], *names: str) -> None:
    """The same scripts against the variant-3 server (--read-size of a few
    bytes): its first byte picks the server."""
    for name in names:
        assert seeds[name][0] == 2, name
        seeds[f"small-read-{name}"] = bytes([3]) + seeds[name][1:]


# ---- WebSocket -------------------------------------------------------------------

def ws_handshake(e: Enc, protocol: bytes | None = None, offer: int | None = None) -> Enc:
    """offer: an index into harness.EXT_OFFERS (permessage-deflate)."""
    e.b += b"k" * 16
    sel = (1 if protocol is not None else 0) | (4 if offer is not None else 0)
    e.u8(sel).blob(b"")
    if protocol is not None:
        e.blob(protocol)
    if offer is not None:
        e.u8(offer)
    return e.u8(0)


def ws_app(e: Enc, *action: int) -> Enc:
    return e.u8(14, 0, 0, *action)


def ws_accept(e: Enc, subprotocol: bool = False) -> Enc:
    return ws_app(e, 4, 0, 1 if subprotocol else 0)


def ws_msg(e: Enc, payload: bytes, binary: bool = False, frags: int = 1,
           compressed: bool = False) -> Enc:
    e.u8(8, 0, (1 if binary else 0) | (2 if compressed else 0)).blob(payload).u8(frags - 1)
    for i in range(frags):
        last = i == frags - 1
        if not last:
            e.u8(len(payload) // frags)
        e.b += b"\x11\x22\x33\x44"
        e.u8(1)  # no forced long form
        if not last:
            e.u8(200)  # no ping between fragments
    return e


def ws_seeds() -> dict[str, bytes]:
    seeds = {}
    for v in (0, 2):
        e = ws_handshake(Enc(v)).write().step(2)
        ws_app(e, 0)  # receive websocket.connect
        ws_accept(e).step()
        ws_msg(e, b"hello").write().step()
        ws_app(e, 0)
        ws_app(e, 6, 0).blob(b"echo")
        ws_app(e, 8, 1, 0, 1).blob(b"bye")  # close 1000 "bye"
        seeds[f"echo-v{v}"] = e.step(2).bytes()
    e = ws_handshake(Enc(2), b"chat, superchat").write().step(2)
    ws_app(e, 0)
    ws_accept(e, True).step()
    seeds["subprotocol"] = e.bytes()
    e = ws_handshake(Enc(2)).write().step(2)
    ws_app(e, 0)
    ws_accept(e).step()
    ws_msg(e, b"fragmented message!", frags=3).write().step()
    ws_msg(e, bytes(range(40)), binary=True).write().step()
    ws_app(e, 0)
    ws_app(e, 0)
    seeds["fragments"] = e.step(2).bytes()
    e = ws_handshake(Enc(2)).write().step(2)
    ws_app(e, 0)
    ws_accept(e).step()
    ws_app(e, 3, 0)  # receive cancelled
    ws_msg(e, b"first").write().step()
    ws_msg(e, b"second").write().step()
    ws_app(e, 0)
    ws_app(e, 0)
    seeds["receive-cancelled"] = e.step(2).bytes()
    e = ws_handshake(Enc(2)).write().step(2)
    ws_app(e, 0)
    ws_app(e, 9, 0, 0)  # denial 403
    ws_app(e, 10).blob(b"no").u8(0)
    seeds["denial"] = e.step(2).bytes()
    e = ws_handshake(Enc(2)).write().step(2)
    ws_app(e, 0)
    ws_accept(e).step()
    e.u8(12, 0, 1, 3).blob(b"gone")  # client close 1001 "gone"
    e.write().step(2)
    ws_app(e, 0)
    seeds["client-close"] = e.bytes()
    e = ws_handshake(Enc(2)).write().step(2)
    ws_app(e, 0)
    ws_accept(e).step()
    e.u8(13, 0, 0).blob(b"ping!").write().step(2)
    e.sleep(25).sleep(25)
    seeds["ping-timers"] = e.bytes()
    e = ws_handshake(Enc(2)).write().step(2)
    ws_app(e, 0)
    ws_accept(e).step()
    e.u8(10, 0, 0x81).blob(b"unmasked").u8(0, 0).write().step(2)
    seeds["unmasked-frame"] = e.bytes()
    e = ws_handshake(Enc(0)).write().step(2)
    ws_app(e, 0)
    ws_accept(e).step().rst().step(2)
    seeds["rst"] = e.bytes()
    e = ws_handshake(Enc(2)).write().step(2)
    ws_app(e, 0)
    ws_accept(e).step()
    ws_app(e, 11)  # raise
    seeds["app-raises"] = e.step(2).bytes()
    e = ws_handshake(Enc(2)).write().step(2)
    ws_app(e, 0)
    ws_accept(e).step().close_all().step(2)
    seeds["shutdown"] = e.bytes()
    e = ws_handshake(Enc(2)).write().step(2)
    ws_app(e, 0)
    ws_app(e, 16, 0, 0)  # subscribe before the accept: refused
    ws_accept(e).step()
    ws_app(e, 16, 0, 0)  # subscribe "t"
    ws_app(e, 16, 0, 1)  # and "u"
    ws_app(e, 16, 2, 0, 1, 0, 0)  # publish text to "t": comes back to us
    ws_app(e, 16, 3, 1, 2, 1)  # publish() 125 bytes to "u"
    ws_app(e, 16, 2, 0, 1, 1, 1, 1)  # publish bytes, exclude_self
    for _ in range(6):
        ws_app(e, 16, 2, 0, 5, 1, 0)  # 64 KiB each: past the queue bound
    ws_app(e, 16, 1, 0)  # unsubscribe "t"
    ws_app(e, 6, 0).blob(b"after")
    seeds["pubsub"] = e.step(2).bytes()
    e = ws_handshake(Enc(2)).write().step(2)
    ws_app(e, 0)
    ws_accept(e).step()
    ws_app(e, 16, 0, 0)
    ws_app(e, 16, 2, 0, 3, 0, 0)  # 126 bytes
    e.rst().step(2)  # gone while subscribed
    seeds["pubsub-rst"] = e.bytes()
    seeds["connect-timeout"] = ws_handshake(Enc(2)).write().sleep(25).sleep(25).sleep(25).bytes()
    # The wslay context parks (websocket.c ws_park) from accept and after
    # each server ping: a frame cut across a ping, a fragmented message,
    # then the app's close on a parked context.
    e = ws_handshake(Enc(2)).write().step(2)
    ws_app(e, 0)
    ws_accept(e).step().sleep(25)
    ws_msg(e, b"cut across a ping").write(3).step().sleep(25).write().step()
    e.sleep(25)
    ws_msg(e, b"in three fragments", frags=3).write().step()
    ws_app(e, 0)
    ws_app(e, 0)
    e.sleep(25)
    ws_app(e, 8, 1, 0, 1).blob(b"bye")
    seeds["parked"] = e.step(2).bytes()
    # A message in 100 (then 200) empty fragments and a last one: past the
    # 4096-byte limit at 64 bytes a frame (close 1009).
    for many, n in ((252, 100), (253, 200)):
        e = ws_handshake(Enc(2)).write().step(2)
        ws_app(e, 0)
        ws_accept(e).step()
        e.u8(8, 0, 0).blob(b"tiny fragments").u8(many)
        for i in range(n):
            last = i == n - 1
            if not last:
                e.u8(0)  # an empty part (the last one takes the rest) ...
            e.b += b"\x11\x22\x33\x44"
            e.u8(1)  # ... in the short form
            if not last:
                e.u8(200)  # no ping after it
        e.write().step(2)
        ws_app(e, 0)
        seeds[f"many-fragments-{n}"] = e.step(2).bytes()
    seeds.update(ws_failure_seeds())
    seeds.update(ws_deflate_seeds())
    seeds.update(ws_held_seeds())
    seeds.update(ws_thread_seeds())
    seeds.update(ws_hold_seeds())
    small_read(seeds, "fragments", "ping-timers", "burst-before-accept", "pubsub", "parked")
    return seeds


def ws_thread_seeds() -> dict[str, bytes]:
    """Off the loop's thread (244: through a thread, 245: awaited in one),
    a publish burst that closes its own subscriber 1013 (252), the
    --http-timeout server (first byte 248), loop timers and a loop
    closed after the input."""
    seeds = {}
    e = ws_handshake(Enc(2)).write().step(2)
    ws_app(e, 244, 0)  # receive websocket.connect through a thread
    ws_app(e, 244, 4, 0, 0)  # accept
    ws_msg(e, b"to a thread").write().step()
    ws_app(e, 244, 0)
    ws_app(e, 244, 6, 0).blob(b"from a thread")
    seeds["off-thread"] = e.step(2).bytes()
    def accepted() -> Enc:
        e = ws_handshake(Enc(2)).write().step(2)
        ws_app(e, 0)
        return ws_accept(e).step()

    for how in (0, 1, 2, 3, 5):
        e = accepted()
        ws_app(e, 245, how)
        ws_msg(e, b"after").write().step()
        ws_app(e, 0)
        seeds[f"awaited-off-thread-{how}"] = e.step(2).bytes()
    for how in (1, 3, 9, 0, 4):
        e = accepted()
        ws_app(e, 246, how)
        ws_msg(e, b"one").write().step()
        ws_msg(e, b"two").write().step()
        ws_app(e, 246, how | 8)
        ws_app(e, 0)
        seeds[f"waiter-by-hand-{how}"] = e.step(2).bytes()
    e = ws_handshake(Enc(2)).write().step(2)
    ws_app(e, 0)
    ws_accept(e).step()
    ws_app(e, 16, 0, 0)  # subscribe "t"
    ws_app(e, 252, 0, 6)  # 8 publishes of 64 KiB to "t", unread
    seeds["publish-burst"] = e.step(2).sleep(5).bytes()
    e = ws_handshake(Enc(248)).write().step(2)
    ws_app(e, 0)
    seeds["http-timeout-before-accept"] = e.sleep(25).step(2).bytes()
    e = ws_handshake(Enc(248)).write().step(2)
    ws_app(e, 0)
    ws_accept(e).step().sleep(25)
    ws_msg(e, b"past the http timeout").write().step()
    ws_app(e, 0)
    seeds["http-timeout-after-accept"] = e.step(2).bytes()
    e = ws_handshake(Enc(2)).write().step(2)
    ws_app(e, 0)
    ws_accept(e).step().when_timers(TIMER_OPS)
    ws_msg(e, b"after timers").write().step()
    ws_app(e, 0)
    seeds["when-timers"] = e.renew_loop().step(2).bytes()
    return seeds


def ws_hold_seeds() -> dict[str, bytes]:
    """A peer that floods pings and does not read (harness.read_hold_op), on
    the op's own server, next to an accepted connection of the script's:
    5200 pings of 125 bytes (past harness.HOLD_STALL_BOUND), then each
    ending; 100 empty pings that pass the 4 KiB write buffer in one read."""
    seeds = {}
    ends = ("app-closes", "client-closes", "half-close", "reset")
    for end, name in enumerate(ends):
        e = ws_handshake(Enc(2)).write().step(2)
        ws_app(e, 0)
        ws_accept(e).step()
        e.read_hold(12 + end, 255).step()
        ws_msg(e, b"after the hold").write().step()
        ws_app(e, 0)
        seeds[f"read-hold-{name}"] = e.step(2).bytes()
    e = ws_handshake(Enc(2)).write().step(2)
    ws_app(e, 0)
    ws_accept(e).step()
    seeds["read-hold-small"] = e.read_hold(0, 0).step(2).bytes()
    return seeds


def ws_held_seeds() -> dict[str, bytes]:
    """receive_held (harness.receive_held): a receive() whose waiting future
    the app holds and uses, one op per byte (0/1 add a done callback, 2
    remove it, 3 result()/exception(), 4 another task awaits it, 5/6/7
    keep it strongly, by a bound method, weakly, 8 set an attribute, 9
    step the loop (73: set or delete a call_soon on the loop instance),
    10 cancel the receive()'s task, 11 cancel the future);
    the client's message comes while it waits, or not at all."""
    seeds = {}
    programs = {
        "callbacks": bytes([0, 1, 0, 2, 0, 3, 4, 4, 9, 9, 9, 9, 9, 3]),
        "kept": bytes([5, 6, 7, 8, 0, 9, 9, 9, 9, 9, 9]),
        "call-soon-patched": bytes([0, 73, 1, 9, 9, 73, 0, 73, 9, 9, 9, 9]),
        "task-cancelled": bytes([0, 4, 9, 3, 10]),
        "future-cancelled": bytes([0, 4, 1, 59, 9, 0, 4, 11, 9, 9, 9]),
        "never-comes": bytes([0, 5, 4, 3]),
    }
    for name, ops in programs.items():
        e = ws_handshake(Enc(2)).write().step(2)
        ws_app(e, 0)
        ws_accept(e).step()
        for _ in range(3):  # three in a row: kept ones must stay done
            ws_app(e, 20).blob(ops)
            e.step(2)
            if name != "never-comes":
                ws_msg(e, b"while held").write().step()
            e.step(3)
        ws_app(e, 0)
        seeds[f"held-{name}"] = e.step(2).bytes()
    return seeds


def ws_burst(e: Enc, n: int, size_idx: int, ping: bool) -> Enc:
    """n (up to 100) whole binary messages in one go (sizes: 0, 3, 200,
    1000 bytes)."""
    return e.u8(15, 0, 2, n - 1, size_idx, 1 if ping else 0)


def ws_failure_seeds() -> dict[str, bytes]:
    """Frames that fail the connection after a good message (close 1002,
    nothing after it), bursts past the read queue's bounds, an app's own
    Sec-WebSocket-Extensions header."""
    seeds = {}
    bad = {
        "ping-126": (0x89, b"p" * 126, 0),
        "fragmented-ping": (0x09, b"p", 0),
        "non-minimal-length": (0x82, b"short", 1),
    }
    for name, (b0, payload, long_form) in bad.items():
        e = ws_handshake(Enc(2)).write().step(2)
        ws_app(e, 0)
        ws_accept(e).step()
        ws_msg(e, b"good")
        e.u8(10, 0, b0).blob(payload).u8(1, long_form).write().step(2)
        ws_app(e, 0)
        ws_app(e, 6, 0).blob(b"too late")
        ws_app(e, 0)
        seeds[f"fail-{name}"] = e.step(2).bytes()
    for name, v, n, size_idx in (("count", 2, 100, 0), ("bytes", 2, 80, 3),
                                 ("slow-bytes", 1, 90, 3)):
        e = ws_handshake(Enc(v)).write().step(2)
        ws_app(e, 0)
        ws_accept(e).step()
        ws_burst(e, n, size_idx, True).write().step(2)
        ws_app(e, 2, 254)  # receive up to 255 messages
        seeds[f"burst-{name}"] = e.step(2).bytes()
    e = ws_handshake(Enc(2)).write().step(2)
    ws_burst(e, 80, 1, True).write().step(2)  # before the accept
    ws_app(e, 0)
    ws_accept(e).step()
    ws_app(e, 2, 254)
    seeds["burst-before-accept"] = e.step(2).bytes()
    for v, offer in ((2, None), (2, 0), (1, 0)):
        e = ws_handshake(Enc(v), offer=offer).write().step(2)
        ws_app(e, 0)
        ws_app(e, 4, 1, 2, 9, 0, 9, 1, 0)  # accept with two extension fields
        ws_msg(e, b"hello").write().step()
        ws_app(e, 0)
        seeds[f"app-extensions-v{v}-o{offer}"] = e.step(2).bytes()
    return seeds


def ws_deflate_seeds() -> dict[str, bytes]:
    """permessage-deflate: offers (harness.EXT_OFFERS), compressed
    messages, garbage and a bomb under RSV1."""
    seeds = {}
    for v, offer in ((0, 0), (2, 1), (2, 2), (2, 3), (2, 8)):
        e = ws_handshake(Enc(v), offer=offer).write().step(2)
        ws_app(e, 0)
        ws_accept(e).step()
        ws_msg(e, b"hello hello hello hello", compressed=True).write().step()
        ws_msg(e, b"hello again, hello hello!" * 3, frags=3, compressed=True).write().step()
        ws_msg(e, b"plain", binary=True).write().step()
        ws_app(e, 0)
        ws_app(e, 0)
        ws_app(e, 0)
        ws_app(e, 6, 0).blob(b"echo echo echo echo echo echo")
        seeds[f"deflate-v{v}-o{offer}"] = e.step(2).bytes()
    e = ws_handshake(Enc(2), offer=7).write().step(2)  # declined: foo=1
    ws_app(e, 0)
    ws_accept(e).step()
    ws_msg(e, b"compressed anyway", compressed=True).write().step(2)
    seeds["deflate-declined"] = e.bytes()
    for name, op in (("garbage", [1, 1]), ("bomb", [1, 0x40])):
        e = ws_handshake(Enc(2), offer=0).write().step(2)
        ws_app(e, 0)
        ws_accept(e).step()
        e.u8(15, 0, *op)
        if name == "garbage":
            e.blob(b"\xff\xfe not deflate at all")
        e.u8(1).write().step(2)
        ws_app(e, 0)
        seeds[f"deflate-{name}"] = e.bytes()
    return seeds


# ---- heads ------------------------------------------------------------------------
NAME_IDX = {0: 0, 1: 1, 14: 2, 100: 3, 117: 4, 118: 5, 200: 6, 1000: 7}


def head_seeds() -> dict[str, bytes]:
    seeds = {}
    # (method, version, connection header, streamed) index tuples.
    shapes = [(0, 0, 0, 0), (0, 0, 1, 1), (0, 1, 2, 1), (2, 0, 0, 0), (3, 1, 0, 1)]
    for name, ni in NAME_IDX.items():
        for method, version, conn, streamed in shapes:
            # status index 4 (431) streamed; 0 (200) one-shot
            status = 4 if streamed else 0
            e = Enc(ni).u8(64, method, version, conn, status, 1, 1)
            e.u8(1).u8(9).token(b"x-app").blob(b"value")  # one header
            if streamed:
                e.u8(1, 1).blob(b"a" * 30).blob(b"b" * 80)
            else:
                e.u8(0).blob(b"hello")
            seeds[f"http-n{name}-m{method}-v{version}-c{conn}-s{streamed}"] = e.bytes()
        e = Enc(ni).u8(0)
        e.b += b"k" * 16
        e.u8(1)  # offer chat
        e.u8(1, 9).token(b"x-ws").blob(b"1")  # one accept header
        e.u8(1, 0)  # subprotocol "chat"
        seeds[f"ws-n{name}"] = e.bytes()
    # Framing headers from the app (content-length pick, transfer-encoding
    # pick; None: left out), to HTTP/1.1 and HTTP/1.0: CL with TE, a
    # signed length, gzip alone, chunked to HTTP/1.0.
    for cl, te, version in [(1, 0, 0), (6, None, 0), (None, 2, 0), (None, 3, 0),
                            (None, 0, 1), (7, None, 1), (9, 4, 0)]:
        e = Enc(1).u8(64, 0, version, 0, 0, 1, 1)
        hs = [(0, cl)] if cl is not None else []
        hs += [(1, te)] if te is not None else []
        e.u8(len(hs))
        for k, idx in hs:
            e.u8(k, idx)
        e.u8(0).blob(b"hello")
        seeds[f"framing-cl{cl}-te{te}-v{version}"] = e.bytes()
    return seeds


# ---- TLS ----------------------------------------------------------------------------

def tls_seeds() -> dict[str, bytes]:
    """harness.read_hold_op's TLS 1.3 flood (b & 16): 650 KeyUpdates from a
    peer that does not read, then each ending."""
    ends = ("answered", "close-notify", "half-close", "reset")
    return {f"read-hold-{name}": Enc().read_hold(16 + end, 255).bytes()
            for end, name in enumerate(ends)}


# Seeds that crash on main go to fuzz/crashes/<target>/ (untracked) instead
# of the corpus until their fix lands; list them here by name. (Issue 9's
# defects 1, 3 and 4 were listed until their fixes were merged.)
KNOWN_DEFECTS: dict[str, list[str]] = {"http": [], "websocket": [], "head": [], "tls": []}


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "corpus")
    held = os.path.join(HERE, "crashes")
    for target, seeds in (("http", http_seeds()), ("websocket", ws_seeds()),
                          ("head", head_seeds()), ("tls", tls_seeds())):
        n = 0
        for name, data in seeds.items():
            sha = hashlib.sha1(data).hexdigest()[:12]
            known = name in KNOWN_DEFECTS[target]
            d = os.path.join(held if known else out, target)
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, f"seed-{name}-{sha}"), "wb") as f:
                f.write(data)
            n += not known
        print(f"{os.path.join(out, target)}: {n} seeds "
              f"(+{len(seeds) - n} known-defect seeds in {os.path.join(held, target)})")


if __name__ == "__main__":
    main()
