"""A receive() that waits behaves as Daphne's does (an asyncio.Queue's get()
on a stock asyncio loop) under cancellation, timeouts, shield, gather,
TaskGroup, concurrent receive()s and debug mode: each scenario of
tests/apps/recvfut.py runs under a real cdaphne process with a real client,
and against the queue in this process; the results must be the same."""

from __future__ import annotations

import asyncio
import json
import signal

import pytest
import websocket

from .apps import recvfut
from .serverproc import ServerProcess, start_server


@pytest.fixture(scope="module")
def server():
    proc = start_server("tests.apps.recvfut:app")
    try:
        yield proc
    finally:
        code = proc.stop()
    assert code == 0, proc.log_tail()
    assert "Fatal Python error" not in proc.log


def under_cdaphne(server: ServerProcess, name: str):
    ws = websocket.create_connection(server.ws_url("/" + name), timeout=20)
    try:
        while True:
            text = ws.recv()
            if text.startswith("need:"):
                ws.send(text[5:])
            else:
                assert text.startswith("result:"), text
                return json.loads(text[7:])
    finally:
        ws.close()


def under_stock_asyncio(name: str):
    """The scenario with Daphne's receive (an asyncio.Queue's get) on a
    stock asyncio loop; the "client" answers after a short delay."""

    async def main():
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        async def send(msg):
            text = msg["text"]
            if text.startswith("need:"):
                reply = {"type": "websocket.receive", "text": text[5:]}
                loop.call_later(0.005, queue.put_nowait, reply)

        return await recvfut.SCENARIOS[name](queue.get, send)

    loop = asyncio.SelectorEventLoop()
    try:
        return json.loads(json.dumps(loop.run_until_complete(main())))
    finally:
        loop.close()


@pytest.mark.parametrize("name", sorted(recvfut.SCENARIOS))
def test_waiting_receive_behaves_as_an_asyncio_queue_get(server, name):
    expected = under_stock_asyncio(name)
    assert expected[0] != "error", expected
    assert under_cdaphne(server, name) == expected


def test_the_task_waits_on_a_pending_future_of_its_loop(server):
    assert under_cdaphne(server, "what_the_task_waits_on") == [
        True,
        True,
        False,
        False,
        True,
        True,
        False,
        True,
        "nine",
    ]


def test_message_stays_when_the_task_is_cancelled_after_its_wake_up(server):
    assert under_cdaphne(server, "cancel_after_wake") == [True, False, "cancelled", "two"]


def test_a_waiting_receive_yields_the_servers_own_future(server):
    # The loop makes plain Futures and is not in debug mode: receive() waits
    # on a RecvFuture (no asyncio.Future made and completed per message).
    assert under_cdaphne(server, "waits_on") == ["RecvFuture", "eleven"]


def test_held_future_when_the_client_closes(server):
    start = len(server.log)
    ws = websocket.create_connection(server.ws_url("/held_when_the_client_closes"), timeout=20)
    assert ws.recv() == "holding"
    ws.close()
    server.wait_log("held_when_the_client_closes: ok", timeout=10)
    assert "Exception inside application" not in server.log[start:]


def test_a_done_callback_of_the_held_future_closes_the_connection(server):
    start = len(server.log)
    ws = websocket.create_connection(server.ws_url("/closes_in_a_done_callback"), timeout=20)
    assert ws.recv() == "need:c1"
    ws.send("c1")
    opcode, data = ws.recv_data(control_frame=True)
    assert (opcode, data[:2]) == (websocket.ABNF.OPCODE_CLOSE, (4001).to_bytes(2, "big"))
    server.wait_log("closes_in_a_done_callback: c1", timeout=10)
    assert "Exception inside application" not in server.log[start:]


@pytest.mark.parametrize("name", ["plain_at_shutdown", "held_at_shutdown"])
def test_held_future_at_server_shutdown(name):
    # The open WebSocket holds shutdown for the graceful timeout: short.
    proc = start_server("tests.apps.recvfut:app", "--timeout-graceful-shutdown", "0.2")
    try:
        ws = websocket.create_connection(proc.ws_url("/" + name), timeout=20)
        assert ws.recv() == "holding"
        proc.send_signal(signal.SIGTERM)
        opcode, _ = ws.recv_data(control_frame=True)  # answers the close
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        # Waited for, not signalled again (a second SIGTERM once the
        # server let its handlers go ends it with the default action).
        code = proc.wait()
    finally:
        if proc.proc.poll() is None:
            proc.stop()
    assert code == 0, proc.log_tail()
    assert f"{name}: websocket.disconnect" in proc.log, proc.log_tail()
    assert "Fatal Python error" not in proc.log
    assert "Exception inside application" not in proc.log
