"""Makes cdaphne's loop the one every new event loop is (asyncio's policy),
and counts them: a suite that ran on another loop is seen. A loop made
without the policy (``asyncio.SelectorEventLoop()``, a ``loop_factory``) is
counted apart, as foreign: the suites must make none.

Imported by the pytest plugin (asgiref's suite) and by the wrapper around
Django's runtests.py; at exit, the counts go to $CDAPHNE_LOOPS_FILE ("<ours> <foreign>").
"""

from __future__ import annotations

import asyncio
import atexit
import os

from cdaphne.loop import LibuvEventLoop, new_event_loop

made = 0
foreign: list[str] = []  # the types of the loops made that are not ours
_base_init = asyncio.BaseEventLoop.__init__


def _counting_init(self: asyncio.BaseEventLoop, *args: object, **kwargs: object) -> None:
    if not isinstance(self, LibuvEventLoop):
        foreign.append(type(self).__qualname__)
    _base_init(self, *args, **kwargs)


class Policy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self) -> LibuvEventLoop:
        global made
        made += 1
        return new_event_loop()


def _write_count() -> None:
    path = os.environ.get("CDAPHNE_LOOPS_FILE")
    if path:
        with open(path, "w") as f:
            f.write(f"{made} {len(foreign)}")


asyncio.BaseEventLoop.__init__ = _counting_init  # type: ignore[method-assign]
asyncio.set_event_loop_policy(Policy())
atexit.register(_write_count)
