"""cdaphne.testing.CdaphneProcess: a real server in a child process."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from .django_helpers import cdaphne_server_available

pytestmark = pytest.mark.skipif(
    not cdaphne_server_available(), reason="cdaphne.server does not exist yet"
)


async def hello_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello from the child"})


def get_hello_app() -> Any:
    return hello_app


def get_broken_app() -> Any:
    raise LookupError("no application here")


def touch(path: str) -> None:
    Path(path).write_text("called")


def wait_ready(process: Any) -> int:
    assert process.ready.wait(30), "server did not become ready"
    return int(process.port.value)


def test_process_serves_on_an_os_chosen_port_and_stops_on_terminate(tmp_path: Path) -> None:
    from cdaphne.testing import CdaphneProcess

    setup_marker = tmp_path / "setup"
    teardown_marker = tmp_path / "teardown"
    process = CdaphneProcess(
        "127.0.0.1",
        get_hello_app,
        setup=partial(touch, str(setup_marker)),
        teardown=partial(touch, str(teardown_marker)),
    )
    process.start()
    try:
        port = wait_ready(process)
        assert port > 0
        assert setup_marker.exists()
        response = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert response.text == "hello from the child"
    finally:
        process.terminate()
        process.join(30)
    assert process.exitcode == 0
    assert teardown_marker.exists()
    assert process.errors.empty()


def test_process_resolves_localhost_and_passes_config_kwargs() -> None:
    from cdaphne.testing import CdaphneProcess

    process = CdaphneProcess("localhost", get_hello_app, kwargs={"server_name": "testing-name"})
    process.start()
    try:
        port = wait_ready(process)
        response = httpx.get(f"http://localhost:{port}/", timeout=10)
        assert response.status_code == 200
        assert response.headers.get("server") == "testing-name"
    finally:
        process.terminate()
        process.join(30)


def test_process_reports_a_failing_get_application(tmp_path: Path) -> None:
    from cdaphne.testing import CdaphneProcess

    teardown_marker = tmp_path / "teardown"
    process = CdaphneProcess(
        "127.0.0.1", get_broken_app, teardown=partial(touch, str(teardown_marker))
    )
    process.start()
    process.join(30)
    assert not process.ready.is_set()
    error, text = process.errors.get(timeout=5)
    assert isinstance(error, LookupError)
    assert "no application here" in text
    assert "Traceback" in text
    assert teardown_marker.exists()


def test_process_reports_a_port_it_cannot_bind() -> None:
    import socket

    from cdaphne.testing import CdaphneProcess

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        process = CdaphneProcess("127.0.0.1", get_hello_app, port=busy.getsockname()[1])
        process.start()
        process.join(30)
    assert not process.ready.is_set()
    error, text = process.errors.get(timeout=5)
    assert isinstance(error, RuntimeError)
    assert "before listening" in str(error)


async def receive_forever_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    # Answers every scope by awaiting receive(), as daphne.testing's
    # TestApplication does; with lifespan "auto" this would hold startup.
    message = await receive()
    if scope["type"] == "websocket" and message["type"] == "websocket.connect":
        await send({"type": "websocket.accept"})
    elif scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
    while True:
        await receive()


def get_receive_forever_app() -> Any:
    return receive_forever_app


def test_process_has_no_lifespan_by_default_and_terminates_with_an_open_websocket() -> None:
    import time

    import websocket

    from cdaphne.testing import CdaphneProcess

    process = CdaphneProcess("127.0.0.1", get_receive_forever_app)
    process.start()
    try:
        port = wait_ready(process)  # lifespan "auto" would never get here
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/", timeout=5)
        t0 = time.monotonic()
        process.terminate()
        process.join(30)
        taken = time.monotonic() - t0
        ws.close()
    finally:
        if process.is_alive():
            process.kill()
            process.join()
    assert process.exitcode == 0
    # Daphne's process goes at once; the command line's 10 s grace is off.
    assert taken < 5, f"terminate() took {taken:.1f} s"


def echo_body_app_factory() -> Any:
    async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = repr([len(c) for c in chunks]) + " " + repr(scope["client"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body.encode()})

    return echo


def test_process_takes_daphnes_request_buffer_size_and_proxy_header_kwargs() -> None:
    from cdaphne.testing import CdaphneProcess

    kwargs = {
        "request_buffer_size": 10,
        "proxy_forwarded_address_header": "X-Forwarded-For",
        "proxy_forwarded_port_header": "X-Forwarded-Port",
        "proxy_forwarded_proto_header": "X-Forwarded-Proto",
    }
    process = CdaphneProcess("127.0.0.1", echo_body_app_factory, kwargs=kwargs)
    process.start()
    try:
        port = wait_ready(process)
        response = httpx.post(f"http://127.0.0.1:{port}/", content=b"x" * 25, timeout=10,
                              headers={"X-Forwarded-For": "10.1.2.3", "X-Forwarded-Port": "80"})
        assert response.text == "[10, 10, 5] ('10.1.2.3', 80)"
    finally:
        process.terminate()
        process.join(30)
