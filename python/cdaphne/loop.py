"""asyncio on cdaphne's libuv loop.

`LibuvSelector` is a `selectors` selector whose `select()` runs the libuv
loop once: asyncio's own file descriptors are libuv poll handles on the
same loop as the server's sockets, so one `epoll_wait` serves both and
every asyncio API keeps working inside apps.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import os
import selectors
import signal
import socket
import threading
from asyncio import format_helpers
from typing import Any

from ._cdaphne import LoopCore, LoopMethods

# A file descriptor no real file has: the selector reports it readable
# when the C side has parsed requests whose apps must start.
_DISPATCH_FD = -1


def reserve_stdio() -> None:
    """Opens /dev/null on whichever of descriptors 0-2 is closed (a daemon
    started with `<&- >&-`), as the process's own would be.  Else the
    loop's epoll descriptor or a socket takes one: libuv aborts when it
    closes it (uv__close asserts that it never closes 0-2) and never closes
    a stream on one; a supervisor's listening socket would be its workers'
    stdin or stdout."""
    for fd in range(3):
        try:
            os.fstat(fd)
            continue
        except OSError as exc:
            if exc.errno != errno.EBADF:
                continue
        nul = os.open(os.devnull, os.O_RDWR)  # The lowest free descriptor:
        if nul == fd:
            os.set_inheritable(fd, True)
        else:
            os.close(nul)  # another thread took fd first.


class LibuvSelector(selectors._BaseSelectorImpl):
    """A selector backed by a libuv loop (`LoopCore`)."""

    # _BaseSelectorImpl's, which typeshed does not declare.
    _fd_to_key: dict[int, selectors.SelectorKey]
    _fileobj_lookup: Any

    def __init__(self) -> None:
        super().__init__()
        reserve_stdio()
        self.core = LoopCore()
        self._dispatch_ready: list[tuple[selectors.SelectorKey, int]] = []

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Route request dispatch through `loop` (called once by the loop)."""
        self.core.attach(loop)
        handle = asyncio.Handle(self.core.dispatch, (), loop)
        key = selectors.SelectorKey(
            _DISPATCH_FD, _DISPATCH_FD, selectors.EVENT_READ, (handle, None)
        )
        self._dispatch_ready = [(key, selectors.EVENT_READ)]

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = super().register(fileobj, events, data)
        try:
            self.core.poll(key.fd, events)
        except BaseException:
            super().unregister(fileobj)
            raise
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        key = super().unregister(fileobj)
        self.core.poll(key.fd, 0)
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = self._fd_to_key.get(self._fileobj_lookup(fileobj))
        if key is None:
            raise KeyError(f"{fileobj!r} is not registered")
        if events != key.events:
            self.core.poll(key.fd, events)
        key = key._replace(events=events, data=data)
        self._fd_to_key[key.fd] = key
        return key

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        core = self.core
        if core.has_pending():
            return self._dispatch_ready
        fd_to_key = self._fd_to_key
        ready = []
        for fd, events in core.run_once(timeout):
            key = fd_to_key.get(fd)
            if key is not None:
                ready.append((key, events & key.events))
        if core.has_pending():
            ready += self._dispatch_ready
        return ready

    def close(self) -> None:
        super().close()
        self.core.close()


# Python 3.13 gave _format_callback_source a `debug` argument.
_FORMAT_TAKES_DEBUG = (
    "debug" in inspect.signature(format_helpers._format_callback_source).parameters
)


def _report_callback_error(handle: asyncio.Handle, exc: BaseException) -> None:
    """asyncio.Handle._run's except clause, for handles run from C."""
    kwargs = {"debug": handle._loop.get_debug()} if _FORMAT_TAKES_DEBUG else {}  # type: ignore[attr-defined]
    cb = format_helpers._format_callback_source(
        handle._callback,  # type: ignore[attr-defined]
        handle._args,
        **kwargs,
    )
    context = {"message": f"Exception in callback {cb}", "exception": exc, "handle": handle}
    if handle._source_traceback:  # type: ignore[attr-defined]
        context["source_traceback"] = handle._source_traceback  # type: ignore[attr-defined]
    handle._loop.call_exception_handler(context)  # type: ignore[attr-defined]


class _LoopDict:
    """`loop.__dict__`, as the base class's descriptor gives it; assigning
    it tells the C core, which reads the loop's attributes from the dict
    it found (a new dict's `_debug` or task factory went unseen)."""

    def __init__(self, base: Any) -> None:
        self.base = base

    def __get__(self, obj: Any, cls: Any = None) -> Any:
        return self if obj is None else self.base.__get__(obj, cls)

    def __set__(self, obj: Any, value: Any) -> None:
        self.base.__set__(obj, value)
        core = obj.__dict__.get("core")
        if core is not None:
            core.sched_dict_replaced()

    def __delete__(self, obj: Any) -> None:
        self.base.__delete__(obj)


def _set_wakeup_fd(fd: int) -> bool:
    """signal.set_wakeup_fd(fd) for a fd that was set before; False when it
    can no longer be (closed by its owner, or its number reused by a blocking
    file): it stays unset.  Stock asyncio's run_forever never touches it, so
    a stale one must not make ours raise."""
    try:
        signal.set_wakeup_fd(fd)
    except (OSError, ValueError):
        return False
    return True


class LibuvEventLoop(LoopMethods, asyncio.SelectorEventLoop):  # type: ignore[misc]
    """asyncio's selector event loop, on libuv.

    `LoopMethods` (csrc/loopmeth.c) comes first: its C methods
    (`call_soon`, `call_at`, `call_later`, `call_soon_threadsafe`,
    `create_task`, `create_future`, `run_in_executor`, `get_debug`,
    `_run_once`, `_timer_handle_cancelled`, `_write_to_self`) are the
    class's own, so subclasses, class patches (of this class or of
    asyncio's) and instance attributes override them as they would
    asyncio's.  They schedule on
    `self.core`, the libuv loop's scheduling core (csrc/sched.c).

    Thread hops skip asyncio's self-pipe: `_write_to_self` (which
    `call_soon_threadsafe` and signal handlers call) wakes the loop through
    an eventfd of its own (csrc/loop.c; the self-pipe stays for the signal
    wake-up fd only), and `run_in_executor` completes its future from C
    on the loop's thread (csrc/hop.c).
    """

    __dict__ = _LoopDict(next(c.__dict__["__dict__"] for c in asyncio.SelectorEventLoop.__mro__
                              if "__dict__" in c.__dict__))
    # BaseSelectorEventLoop's, which typeshed does not declare.
    _csock: socket.socket | None
    _ready: Any

    def __init__(self) -> None:
        selector = LibuvSelector()
        self.core = selector.core  # before __init__ sets the count below
        super().__init__(selector)
        selector.bind(self)
        # The scheduling core in C (csrc/sched.c): _ready becomes its ring
        # of handles (csrc/readyq.c), _scheduled stays a list (kept in
        # heapq's order from C); debug mode takes asyncio's paths.  Until
        # here LoopMethods' methods were asyncio's.
        ready = self.core.sched_init(_report_callback_error, selector)
        for handle in self._ready:
            ready.append(handle)
        self._ready = ready

    def run_forever(self) -> None:
        # libuv retries epoll_wait after EINTR, so a signal the loop has no
        # handler for (Ctrl-C's KeyboardInterrupt, asyncio.Runner's SIGINT
        # handler) would wait for the loop's next wake-up, where asyncio's
        # select() returns at once.  In the main thread, with no wake-up fd
        # set, the signal's C handler writes to the self-pipe the loop polls
        # (as uvloop does) while it runs.
        owned = self._own_signal_wakeup()
        try:
            super().run_forever()
        finally:
            if owned:
                self._drop_signal_wakeup()

    def _own_signal_wakeup(self) -> bool:
        if threading.current_thread() is not threading.main_thread() or self._csock is None:
            return False
        fd = self._csock.fileno()
        previous = signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
        # Someone's own (add_signal_handler sets ours) is given back, unless
        # its owner closed it and left it set: then ours stays for the run.
        return previous == -1 or not _set_wakeup_fd(previous)

    def _drop_signal_wakeup(self) -> None:
        if self._signal_handlers:  # type: ignore[attr-defined]
            return  # add_signal_handler's now: it stays set between runs
        previous = signal.set_wakeup_fd(-1)
        if self._csock is None or previous != self._csock.fileno():
            _set_wakeup_fd(previous)  # replaced while running: not ours

    # BaseEventLoop's attribute, kept by the C core (csrc/sched.c).
    @property
    def _timer_cancelled_count(self) -> int:
        return self.core.timer_cancelled_count

    @_timer_cancelled_count.setter
    def _timer_cancelled_count(self, n: int) -> None:
        self.core.timer_cancelled_count = n


def new_event_loop() -> LibuvEventLoop:
    return LibuvEventLoop()
