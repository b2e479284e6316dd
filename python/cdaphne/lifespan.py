"""The ASGI lifespan protocol: startup before serving, shutdown after."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from ._types import ASGIApp, Message

logger = logging.getLogger("cdaphne")


class Lifespan:
    """Runs the app's lifespan scope in its own task.

    mode "auto": an app that raises before answering startup (Channels'
    ProtocolTypeRouter does) runs without lifespan; "on": that is fatal.
    """

    def __init__(self, app: ASGIApp, mode: str, shutdown_timeout: float = 10,
                 on_exit: Callable[[], None] | None = None) -> None:
        self.app = app
        self.mode = mode
        self.shutdown_timeout = shutdown_timeout
        self.state: dict[str, Any] = {}
        self.enabled = mode != "off"
        self.failed_message: str | None = None
        # What the app raised before answering startup (mode "on"): the
        # server logs it with its report (a supervisor once for all).
        self.startup_error: BaseException | None = None
        # The app raised SystemExit or KeyboardInterrupt: the process's exit
        # code (logged in one line; on_exit, the server's stop, is called).
        self.exit_code: int | None = None
        self._on_exit = on_exit
        self._shutting_down = False
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._startup_done = asyncio.Event()
        self._shutdown_done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._answered_startup = False

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    async def startup(self) -> bool:
        """True when serving may begin; else failed_message says why (the
        server reports it: startup_failure_text)."""
        if not self.enabled:
            return True
        self._task = asyncio.get_running_loop().create_task(self._run())
        await self._inbox.put({"type": "lifespan.startup"})
        await self._startup_done.wait()
        return self.failed_message is None

    def startup_failure_text(self) -> str:
        return f"Application startup failed{_detail(self.failed_message or '')}"

    async def shutdown(self) -> None:
        if not self.enabled or self._task is None or self._task.done():
            return
        timeout = self.shutdown_timeout
        self._shutting_down = True
        await self._inbox.put({"type": "lifespan.shutdown"})
        try:
            await asyncio.wait_for(self._shutdown_done.wait(), timeout)
        except TimeoutError:
            logger.warning("Lifespan shutdown timed out after %ss", timeout)
            # Cancelled, not left pending: the app's cleanup runs now rather
            # than as a GeneratorExit when the loop is gone.
            self._task.cancel()
            await asyncio.wait([self._task], timeout=1.0)
        if self.failed_message is not None:
            logger.error("Application shutdown failed%s", _detail(self.failed_message))

    async def _run(self) -> None:
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "state": self.state,
        }
        try:
            await self.app(scope, self._receive, self._send)
        except asyncio.CancelledError:
            # The server stopped during startup (or gave up on shutdown).
            raise
        except (KeyboardInterrupt, SystemExit) as exc:
            self._exit(exc)
        except BaseException as exc:  # noqa: BLE001 - the app's error decides the mode
            if self._answered_startup:
                logger.exception("Exception in lifespan after startup")
            elif self.mode == "auto":
                logger.info("ASGI 'lifespan' protocol appears unsupported (%s).", exc)
                self.enabled = False
            else:
                self.startup_error = exc
                self.failed_message = f"{type(exc).__name__}: {exc}"
        finally:
            self._startup_done.set()
            self._shutdown_done.set()

    def _exit(self, exc: KeyboardInterrupt | SystemExit) -> None:
        """The app asked the process to end: one line, the exit code Python
        gives (SystemExit's code, 130 for KeyboardInterrupt), no traceback
        and no task left holding the exception (asyncio logged "Task
        exception was never retrieved", at interpreter shutdown a logging
        error).  uvicorn takes both as any error (auto: "lifespan
        unsupported", serving on; on: startup failed, exit 3)."""
        self.exit_code = _exit_code(exc)
        if self._shutting_down:
            when = "shutdown"
        elif self._answered_startup:
            when = "after startup"
        else:
            when = "startup"
        raised = repr(exc) if exc.args else type(exc).__name__
        logger.error("The application raised %s in lifespan %s: exiting with code %d",
                     raised, when, self.exit_code)
        if self._on_exit is not None:
            self._on_exit()

    async def _receive(self) -> Message:
        return await self._inbox.get()

    async def _send(self, message: Message) -> None:
        kind = message.get("type")
        if kind == "lifespan.startup.complete":
            self._answered_startup = True
            self._startup_done.set()
        elif kind == "lifespan.startup.failed":
            self._answered_startup = True
            self.failed_message = str(message.get("message", ""))
            self._startup_done.set()
        elif kind == "lifespan.shutdown.complete":
            self._shutdown_done.set()
        elif kind == "lifespan.shutdown.failed":
            self.failed_message = str(message.get("message", ""))
            self._shutdown_done.set()
        else:
            raise RuntimeError(f"unexpected lifespan message {kind!r}")


def _exit_code(exc: KeyboardInterrupt | SystemExit) -> int:
    """The code the interpreter exits with when exc goes uncaught (a
    SystemExit that is not an int or None: printed, exit 1)."""
    if isinstance(exc, KeyboardInterrupt):
        return 130  # 128 + SIGINT, what a shell shows
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    return 1


def _detail(message: str) -> str:
    """': message', or nothing for a failure without one (the spec's
    message is optional)."""
    return f": {message}" if message else ""
