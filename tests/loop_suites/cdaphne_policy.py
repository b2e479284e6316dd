"""Makes cdaphne's loop the one every new event loop is (asyncio's policy),
and counts them: a suite that ran on another loop is seen.

Imported by the pytest plugin (asgiref's suite) and by the wrapper around
Django's runtests.py; at exit, the count goes to $CDAPHNE_LOOPS_FILE.
"""

from __future__ import annotations

import asyncio
import atexit
import os

from cdaphne.loop import LibuvEventLoop, new_event_loop

made = 0


class Policy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self) -> LibuvEventLoop:
        global made
        made += 1
        return new_event_loop()


def _write_count() -> None:
    path = os.environ.get("CDAPHNE_LOOPS_FILE")
    if path:
        with open(path, "w") as f:
            f.write(str(made))


asyncio.set_event_loop_policy(Policy())
atexit.register(_write_count)
