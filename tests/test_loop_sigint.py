"""Ctrl-C on a LibuvEventLoop with no signal handler of its own.

libuv retries epoll_wait after EINTR, so before the loop owned the signal
wake-up fd a SIGINT waited for the loop's next wake-up (here 30 s)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from .conftest import ROOT

PRELUDE = """
import asyncio, signal, sys, time
from cdaphne.loop import new_event_loop
async def main():
    print("sleeping", flush=True)
    await asyncio.sleep(30)
"""

SCRIPTS = {
    "run_until_complete": """
loop = new_event_loop()
try:
    loop.run_until_complete(main())
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
    sys.exit(0)
sys.exit(1)
""",
    # asyncio.Runner's own SIGINT handler cancels the main task.
    "Runner": """
with asyncio.Runner(loop_factory=new_event_loop) as runner:
    try:
        runner.run(main())
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
        sys.exit(0)
sys.exit(1)
""",
}


@pytest.mark.parametrize("how", sorted(SCRIPTS))
def test_sigint_interrupts_a_sleeping_loop_promptly(how):
    proc = subprocess.Popen([sys.executable, "-c", PRELUDE + SCRIPTS[how]], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "sleeping"
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("KeyboardInterrupt did not come within 10 s") from None
    assert proc.returncode == 0 and "KeyboardInterrupt" in out


def test_the_wakeup_fd_is_given_back_and_asyncio_s_handlers_keep_theirs():
    script = PRELUDE + """
loop = new_event_loop()
loop.run_until_complete(asyncio.sleep(0))
assert signal.set_wakeup_fd(-1) == -1, "the loop kept the wake-up fd after it stopped"
got = []
loop.add_signal_handler(signal.SIGUSR1, got.append, 1)
loop.run_until_complete(asyncio.sleep(0))
signal.raise_signal(signal.SIGUSR1)  # between runs: asyncio reads it at the next one
loop.run_until_complete(asyncio.sleep(0.05))
assert got == [1], got
mine = signal.set_wakeup_fd(-1)
assert mine != -1, "add_signal_handler's wake-up fd was dropped"
print("ok", flush=True)
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("reuse", ["closed", "reused_by_a_blocking_file"])
def test_a_wakeup_fd_its_owner_closed_and_left_set_does_not_make_the_loop_raise(reuse):
    # A loop whose close() failed (or any code) left the process's signal
    # wake-up fd set to a descriptor it then closed: our run_forever gave it
    # back at its start and raised OSError EBADF (or ValueError, blocking),
    # where stock asyncio's never touches it.  The stale one is dropped.
    script = PRELUDE + f"""
import os, socket
a, b = socket.socketpair()
a.setblocking(False)
signal.set_wakeup_fd(a.fileno())
stale = a.fileno()
a.close()
if {reuse!r} == "reused_by_a_blocking_file":
    assert os.open(os.devnull, os.O_RDONLY) == stale
for factory in (asyncio.SelectorEventLoop, new_event_loop):
    loop = factory()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
assert signal.set_wakeup_fd(-1) == -1, "the stale wake-up fd is still set"
print("ok", flush=True)
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
