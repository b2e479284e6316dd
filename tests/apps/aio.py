"""Every asyncio API a Channels app leans on, exercised inside a request."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback

from asgiref.sync import async_to_sync, sync_to_async

from .common import send_json

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


async def check_asgiref():
    VAR.set("outer")
    seen = {}

    async def inner_async():
        seen["inner_async"] = VAR.get()
        VAR.set("set-in-inner-async")
        return threading.get_ident()

    def sync_part():
        seen["sync"] = VAR.get()
        seen["sync_thread_is_main"] = threading.current_thread() is threading.main_thread()
        ident = async_to_sync(inner_async)()
        seen["after_inner"] = VAR.get()
        VAR.set("set-in-sync")
        return ident

    loop_thread = await sync_to_async(sync_part)()
    seen["back_in_async"] = VAR.get()
    assert seen == {"inner_async": "outer", "sync": "outer", "sync_thread_is_main": False,
                    "after_inner": "set-in-inner-async", "back_in_async": "set-in-sync"}, seen
    # async_to_sync from a worker thread runs the coroutine on this loop.
    assert loop_thread == threading.get_ident(), "inner coroutine ran on another thread"
    return seen


async def check_current_task():
    task = asyncio.current_task()
    assert isinstance(task, asyncio.Task), task
    assert not task.done()
    await asyncio.sleep(0)
    assert asyncio.current_task() is task
    name = task.get_coro().cr_code.co_name
    assert name == "app", name
    return name


async def check_timeout():
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        async with asyncio.timeout(0.05):
            await asyncio.sleep(2)
    except TimeoutError:
        elapsed = loop.time() - t0
        assert elapsed < 1, elapsed
        return round(elapsed, 3)
    raise AssertionError("asyncio.timeout did not fire")


async def check_taskgroup():
    async def work(n):
        await asyncio.sleep(0.01 * n)
        return n * n
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(work(i)) for i in range(4)]
    result = [t.result() for t in tasks]
    assert result == [0, 1, 4, 9]
    return result


async def check_streams():
    async def handle(reader, writer):
        data = await reader.readline()
        writer.write(data.upper())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 3)
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    assert line == b"PING\n", line
    return line.decode()


async def check_threadsafe():
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def worker():
        loop.call_soon_threadsafe(fut.set_result, threading.get_ident())

    t = threading.Thread(target=worker)
    t.start()
    ident = await asyncio.wait_for(fut, 3)
    t.join()
    assert ident != threading.get_ident()
    return True


async def check_subprocess():
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; print(sys.stdin.read().upper())",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(b"hello"), 10)
    assert proc.returncode == 0
    assert out.strip() == b"HELLO", out
    return out.strip().decode()


async def check_signal():
    loop = asyncio.get_running_loop()
    got = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR1, lambda: got.done() or got.set_result("SIGUSR1"))
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        result = await asyncio.wait_for(got, 3)
    finally:
        assert loop.remove_signal_handler(signal.SIGUSR1)
    return result


async def check_executor():
    loop = asyncio.get_running_loop()
    ident = await loop.run_in_executor(None, threading.get_ident)
    assert ident != threading.get_ident()
    value = await loop.run_in_executor(None, sum, [1, 2, 3])
    assert value == 6
    return value


async def check_getaddrinfo():
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo("localhost", 80)
    assert infos
    return len(infos) > 0


async def check_sock_lowlevel():
    # loop.sock_* on non-blocking sockets, with a payload larger than the
    # socket buffers so sendall and recv both wait on the loop.
    loop = asyncio.get_running_loop()
    payload = os.urandom(1 << 20)
    with socket.socket() as lsock, socket.socket() as csock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        lsock.setblocking(False)
        csock.setblocking(False)
        accept = asyncio.ensure_future(loop.sock_accept(lsock))
        await asyncio.wait_for(loop.sock_connect(csock, lsock.getsockname()), 3)
        conn, _ = await asyncio.wait_for(accept, 3)
        with conn:
            conn.setblocking(False)

            async def receive_all():
                got = bytearray()
                while len(got) < len(payload):
                    chunk = await loop.sock_recv(conn, 65536)
                    assert chunk, "early EOF"
                    got += chunk
                return bytes(got)

            _, got = await asyncio.wait_for(
                asyncio.gather(loop.sock_sendall(csock, payload), receive_all()), 10)
            assert got == payload
            await loop.sock_sendall(conn, b"hello")
            buf = bytearray(16)
            n = await asyncio.wait_for(loop.sock_recv_into(csock, buf), 3)
            assert bytes(buf[:n]) == b"hello", buf
    return len(payload)


async def check_datagram():
    loop = asyncio.get_running_loop()

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            self.transport.sendto(data.upper(), addr)

    class Client(asyncio.DatagramProtocol):
        def __init__(self):
            self.got = loop.create_future()

        def datagram_received(self, data, addr):
            if not self.got.done():
                self.got.set_result(data)

    server, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    try:
        port = server.get_extra_info("sockname")[1]
        client, proto = await loop.create_datagram_endpoint(
            Client, remote_addr=("127.0.0.1", port))
        try:
            client.sendto(b"dgram")
            data = await asyncio.wait_for(proto.got, 3)
        finally:
            client.close()
    finally:
        server.close()
    assert data == b"DGRAM", data
    return data.decode()


async def check_unix_streams():
    async def handle(reader, writer):
        writer.write((await reader.readexactly(4))[::-1])
        await writer.drain()
        writer.close()

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "s.sock")
        server = await asyncio.start_unix_server(handle, path)
        try:
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b"abcd")
            data = await asyncio.wait_for(reader.read(), 3)
            writer.close()
            await writer.wait_closed()
        finally:
            server.close()
            await server.wait_closed()
    assert data == b"dcba", data
    return data.decode()


async def check_call_later_ordering():
    # Timers run in `when` order (asyncio leaves the order of equal `when`s
    # open); call_soon callbacks keep FIFO order and run before timers that
    # fall due later; a cancelled timer never runs; when() is what was asked.
    loop = asyncio.get_running_loop()
    seen = []
    done = loop.create_future()

    def note(tag):
        seen.append(tag)
        if tag == "last" and not done.done():
            done.set_result(None)

    now = loop.time()
    loop.call_at(now + 0.06, note, "last")
    loop.call_at(now + 0.02, note, "b")
    loop.call_at(now + 0.01, note, "a")
    h1 = loop.call_at(now + 0.04, note, "x1")
    loop.call_at(now + 0.04, note, "x2")
    loop.call_at(now + 0.04, note, "x3")
    gone = loop.call_at(now + 0.03, note, "cancelled")
    loop.call_soon(note, "soon1")
    loop.call_soon(note, "soon2")
    gone.cancel()
    assert gone.cancelled()
    assert h1.when() == now + 0.04, (h1.when(), now)
    before = loop.time()
    h2 = loop.call_later(0.5, note, "never")
    assert before + 0.5 <= h2.when() <= loop.time() + 0.5, (before, h2.when())
    h2.cancel()
    await asyncio.wait_for(done, 3)
    assert seen[:4] == ["soon1", "soon2", "a", "b"] and seen[-1] == "last", seen
    assert sorted(seen[4:-1]) == ["x1", "x2", "x3"], seen
    return seen


async def check_handles_cancel():
    loop = asyncio.get_running_loop()
    ran = []
    done = loop.create_future()
    # A handle cancelled by a callback that runs before it in the same
    # iteration is skipped.
    victim = None

    def killer():
        ran.append("killer")
        victim.cancel()

    loop.call_soon(killer)
    victim = loop.call_soon(ran.append, "victim")
    h = loop.call_soon(ran.append, "cancelled-before")
    h.cancel()
    # Many cancelled timers (asyncio compacts its heap past a threshold):
    # the live ones still run, in order.
    timers = [loop.call_later(0.001 * (i % 10), ran.append, f"t{i}") for i in range(300)]
    for i, t in enumerate(timers):
        if i % 4:
            t.cancel()
    loop.call_later(0.001, ran.append, "fired")
    loop.call_later(0.05, done.set_result, None)
    await asyncio.wait_for(done, 3)
    assert "victim" not in ran and "cancelled-before" not in ran, ran
    assert ran[0] == "killer", ran
    assert victim.cancelled() and "fired" in ran
    live = [x for x in ran if x.startswith("t")]
    order = sorted(range(0, 300, 4), key=lambda i: (timers[i].when(), i))
    assert live == [f"t{i}" for i in order], live
    return len(live)


async def check_loop_time():
    loop = asyncio.get_running_loop()
    samples = [loop.time() for _ in range(1000)]
    assert samples == sorted(samples), "loop.time() went backwards"
    t0, m0 = loop.time(), time.monotonic()
    await asyncio.sleep(0.05)
    elapsed, real = loop.time() - t0, time.monotonic() - m0
    # A timer never fires before its time (up to the clock's resolution).
    assert elapsed >= 0.05 - 0.001, elapsed
    assert abs(elapsed - real) < 0.02, (elapsed, real)
    return round(elapsed, 3)


async def check_exception_handler():
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    got = loop.create_future()

    def handler(lp, context):
        if not got.done():
            got.set_result(context)

    loop.set_exception_handler(handler)
    try:
        def boom():
            raise ValueError("from a callback")

        loop.call_soon(boom)
        context = await asyncio.wait_for(got, 3)
    finally:
        loop.set_exception_handler(previous)
    assert isinstance(context["exception"], ValueError), context
    handle = context.get("handle")
    assert callable(getattr(handle, "cancel", None)) and not handle.cancelled(), context
    assert loop.get_exception_handler() is previous
    return context["message"]


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


async def check_debug_slow_callback():
    # Debug mode reports a callback that blocks the loop for longer than
    # slow_callback_duration, through the asyncio logger.
    loop = asyncio.get_running_loop()
    records = _Records()
    logger = logging.getLogger("asyncio")
    logger.addHandler(records)
    old_level, old_debug, old_slow = logger.level, loop.get_debug(), loop.slow_callback_duration
    logger.setLevel(logging.WARNING)
    loop.slow_callback_duration = 0.02
    loop.set_debug(True)
    try:
        done = loop.create_future()

        def slow():
            time.sleep(0.06)
            loop.call_soon(done.set_result, None)

        loop.call_soon(slow)
        await asyncio.wait_for(done, 3)
        await asyncio.sleep(0)
    finally:
        loop.set_debug(old_debug)
        loop.slow_callback_duration = old_slow
        logger.setLevel(old_level)
        logger.removeHandler(records)
    hits = [m for m in records.messages if "slow" in m and "took" in m]
    assert hits, records.messages
    return hits[0][:120]


async def check_callback_contexts():
    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()
    ctx.run(VAR.set, "in-ctx")
    seen = loop.create_future()
    loop.call_soon(lambda: seen.set_result(VAR.get()), context=ctx)
    assert await seen == "in-ctx"
    later = loop.create_future()
    loop.call_later(0.001, lambda: later.set_result(VAR.get()), context=ctx)
    assert await later == "in-ctx"
    VAR.set("task-parent")

    async def child():
        value = VAR.get()
        VAR.set("changed-in-child")
        return value

    assert await asyncio.create_task(child()) == "task-parent"
    assert VAR.get() == "task-parent"  # a Task runs in a copy
    assert await asyncio.to_thread(VAR.get) == "task-parent"
    return True


async def check_executors():
    loop = asyncio.get_running_loop()
    # An explicit executor is used as given (its one thread, its names).
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mine") as pool:
        idents = {await loop.run_in_executor(pool, threading.get_ident) for _ in range(5)}
        name = await loop.run_in_executor(pool, lambda: threading.current_thread().name)
    assert len(idents) == 1 and name.startswith("mine"), (idents, name)

    def fails():
        raise KeyError("from the executor")

    try:
        await loop.run_in_executor(None, fails)
    except KeyError:
        pass
    else:
        raise AssertionError("the executor's exception was lost")
    # Cancelling the awaiting side leaves the loop healthy.
    started = threading.Event()
    release = threading.Event()

    def blocks():
        started.set()
        release.wait(3)
        return "late"

    fut = loop.run_in_executor(None, blocks)
    await asyncio.to_thread(started.wait, 3)
    fut.cancel()
    release.set()
    try:
        await fut
    except asyncio.CancelledError:
        pass
    assert await asyncio.to_thread(lambda: 41 + 1) == 42
    return len(idents)


async def check_asgiref_thread_sensitive():
    # thread_sensitive sync_to_async calls share one thread; async_to_sync
    # from there comes back to this loop, and nests once more.
    loop_thread = threading.get_ident()
    first = await sync_to_async(threading.get_ident)()
    second = await sync_to_async(threading.get_ident)()
    assert first == second != loop_thread, (first, second, loop_thread)
    other = await sync_to_async(threading.get_ident, thread_sensitive=False)()
    assert other != loop_thread

    async def deepest():
        return threading.get_ident()

    def middle():
        async def inner():
            return await sync_to_async(lambda: async_to_sync(deepest)())()
        return async_to_sync(inner)()

    assert await sync_to_async(middle)() == loop_thread
    return True


async def check_taskgroup_errors():
    cancelled = []

    async def fails():
        await asyncio.sleep(0.01)
        raise ValueError("child failed")

    async def sleeper():
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(sleeper())
            tg.create_task(fails())
    except* ValueError as eg:
        errors = eg.exceptions
    else:
        raise AssertionError("no ExceptionGroup")
    assert len(errors) == 1 and cancelled == [True], (errors, cancelled)
    return str(errors[0])


async def check_timeout_reschedule():
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(None) as cm:
        assert cm.when() is None
        cm.reschedule(loop.time() + 5)
        await asyncio.sleep(0.01)
    assert not cm.expired()
    try:
        async with asyncio.timeout_at(loop.time() + 0.01):
            await asyncio.sleep(5)
    except TimeoutError:
        pass
    else:
        raise AssertionError("timeout_at did not fire")
    try:
        await asyncio.wait_for(asyncio.sleep(5), 0.01)
    except TimeoutError:
        pass
    else:
        raise AssertionError("wait_for did not time out")
    return True


CHECKS = {
    "asgiref": check_asgiref,
    "current_task": check_current_task,
    "timeout": check_timeout,
    "taskgroup": check_taskgroup,
    "streams": check_streams,
    "call_soon_threadsafe": check_threadsafe,
    "subprocess": check_subprocess,
    "signal": check_signal,
    "run_in_executor": check_executor,
    "getaddrinfo": check_getaddrinfo,
    "sock_lowlevel": check_sock_lowlevel,
    "datagram": check_datagram,
    "unix_streams": check_unix_streams,
    "call_later_ordering": check_call_later_ordering,
    "handles_cancel": check_handles_cancel,
    "loop_time": check_loop_time,
    "exception_handler": check_exception_handler,
    "debug_slow_callback": check_debug_slow_callback,
    "callback_contexts": check_callback_contexts,
    "executors": check_executors,
    "asgiref_thread_sensitive": check_asgiref_thread_sensitive,
    "taskgroup_errors": check_taskgroup_errors,
    "timeout_reschedule": check_timeout_reschedule,
}


async def app(scope, receive, send):
    if scope["type"] != "http":
        raise RuntimeError("http only")
    results = {}
    for name, check in CHECKS.items():
        try:
            results[name] = {"ok": True, "value": await check()}
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            results[name] = {"ok": False, "error": "".join(
                traceback.format_exception(type(exc), exc, exc.__traceback__))}
    await send_json(send, results)
