"""asyncio and asgiref APIs inside app code on cdaphne's libuv loop."""

from __future__ import annotations

import httpx
import pytest

from .apps.aio import CHECKS


@pytest.fixture(scope="module")
def results(request):
    # One server and one request for all checks; each check is its own test.
    from .conftest import ServerProcess
    proc = ServerProcess(["-p", "0", "--lifespan", "off", "tests.apps.aio:app"])
    try:
        proc.wait_listening()
        r = httpx.get(proc.url("/"), timeout=30)
        assert r.status_code == 200, r.text
        data = r.json()
        again = httpx.get(proc.url("/"), timeout=30).json()
    finally:
        rc = proc.stop()
    assert rc == 0, proc.log_tail()
    return data, again


@pytest.mark.parametrize("name", list(CHECKS))
def test_asyncio_api_inside_app(results, name):
    first, second = results
    assert first[name]["ok"], first[name].get("error")
    # A second request on the same loop works the same (handlers cleaned up).
    assert second[name]["ok"], second[name].get("error")


def test_short_timer_after_cpu_work_fires_on_time(server):
    # libuv's cached loop time went stale while Python ran: a select()
    # timer computed from it fired before the poll, which then blocked on
    # the next timer (the keep-alive timeout) instead of waking asyncio.
    for _ in range(5):
        r = httpx.get(server.url("/cpu_then_sleep"), timeout=5)
        assert r.json()["slept"] < 0.5
