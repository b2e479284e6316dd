"""Every asyncio API a Channels app leans on, exercised inside a request."""

from __future__ import annotations

import asyncio
import contextvars
import os
import signal
import sys
import threading
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
