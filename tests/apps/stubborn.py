"""An app that swallows its first cancellation (tests/test_conn_lifetimes.py):
it says on stderr when it started and when a second cancellation ended it."""

from __future__ import annotations

import asyncio
import sys


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    print("stubborn app: started", file=sys.stderr, flush=True)
    cancels = 0
    while True:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancels += 1
            if cancels == 2:
                print("stubborn app: cancelled twice, ending", file=sys.stderr, flush=True)
                raise
            # No uncancel(): the task still counts as cancelling.
