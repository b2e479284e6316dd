"""A worker app that dies mid-request, for tests/test_red8_workers.py.

/            the worker's pid
/os_exit?c=N os._exit(N) in the middle of the request (headers sent)
/sys_exit?c=N raises SystemExit(N) from the app (before the response)
/sys_exit_late?c=N the same after an await
/segv        a segmentation fault in the middle of the request
/kbint       raises KeyboardInterrupt from the app
/kbint_late  the same after an await
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
from urllib.parse import parse_qs

try:
    from inspect import markcoroutinefunction
except ImportError:  # Python 3.11
    from asgiref.sync import markcoroutinefunction


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    q = parse_qs(scope["query_string"].decode())
    code = int(q.get("c", ["0"])[0])
    path = scope["path"]
    if path == "/sys_exit":
        raise SystemExit(code)
    if path == "/sys_exit_late":
        await asyncio.sleep(0)
        raise SystemExit(code)
    if path == "/kbint":
        raise KeyboardInterrupt
    if path == "/kbint_late":
        await asyncio.sleep(0)
        raise KeyboardInterrupt
    await send({"type": "http.response.start", "status": 200, "headers": []})
    if path == "/os_exit":
        os._exit(code)
    if path == "/segv":
        # The default action, not a sanitizer's report (scripts/test-asan.sh).
        signal.signal(signal.SIGSEGV, signal.SIG_DFL)
        ctypes.string_at(0)
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})


def not_a_coroutine(scope, receive, send):
    """Says it is a coroutine function (ASGI 3), returns 42."""
    return 42


markcoroutinefunction(not_a_coroutine)
