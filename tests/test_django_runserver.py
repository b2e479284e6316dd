"""``manage.py runserver`` of the chat example, with ``cdaphne`` installed first:
real processes on free ports, real HTTP and WebSocket clients."""

from __future__ import annotations

import re
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import websocket

from .django_helpers import (
    ServerProcess,
    WSClient,
    cdaphne_server_available,
    copy_example,
    example_env,
    free_port,
    http_get,
    ipv6_available,
    manage,
    migrate,
)

BANNER = r"Starting ASGI/cdaphne version [\w.+-]+ development server at http://{addr}:{port}/"

needs_server = pytest.mark.skipif(
    not cdaphne_server_available(), reason="cdaphne.server does not exist yet"
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A migrated private copy of the example project."""
    path = copy_example(tmp_path)
    migrate(path)
    return path


@pytest.fixture
def runserver(tmp_path: Path) -> Iterator[object]:
    """Starts ``manage.py runserver ARGS`` in a project; stops them all after."""
    started: list[ServerProcess] = []

    def start(project: Path, *args: str, **env: str) -> ServerProcess:
        process = ServerProcess(
            [sys.executable, "manage.py", "runserver", *args],
            project,
            example_env(project, **env),
            tmp_path / f"runserver-{len(started)}.log",
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def write_settings(project: Path, name: str, body: str) -> str:
    """A settings module in the project's copy, derived from the example's."""
    (project / "chat_project" / f"{name}.py").write_text(
        "from .settings import *  # noqa: F401,F403\n\n" + body
    )
    return f"chat_project.{name}"


@needs_server
def test_runserver_serves_pages_static_files_and_websockets(project: Path, runserver) -> None:
    port = free_port()
    server = runserver(project, f"127.0.0.1:{port}")
    server.wait_for_output(BANNER.format(addr=r"127\.0\.0\.1", port=port))
    server.wait_listening(port)
    out = server.output()
    assert "Performing system checks..." in out
    assert "System check identified no issues" in out
    assert "Watching for file changes with StatReloader" in out
    assert "Quit the server with CONTROL-C." in out

    base = f"http://127.0.0.1:{port}"
    assert http_get(base + "/").status_code == 200
    static = http_get(base + "/static/chat/room.js")
    assert static.status_code == 200
    assert "new WebSocket(url)" in static.text
    assert http_get(base + "/static/chat/missing.js").status_code == 404

    alice = WSClient(f"ws://127.0.0.1:{port}/ws/chat/lobby/")
    bob = WSClient(f"ws://127.0.0.1:{port}/ws/chat/lobby/")
    alice.say("hello over runserver")
    assert bob.recv_json() == {"message": "hello over runserver", "user": "anonymous"}
    alice.close()
    bob.close()

    # Daphne's access log lines, on the django.channels.server logger.
    server.wait_for_output(r"HTTP GET / 200 \[\d+\.\d\d, 127\.0\.0\.1:\d+\]")
    server.wait_for_output(r"HTTP GET /static/chat/room\.js 200 \[")
    server.wait_for_output(r"HTTP GET /static/chat/missing\.js 404 \[")
    server.wait_for_output(r"WebSocket HANDSHAKING /ws/chat/lobby/ \[127\.0\.0\.1:\d+\]")
    server.wait_for_output(r"WebSocket CONNECT /ws/chat/lobby/ \[127\.0\.0\.1:\d+\]")
    server.wait_for_output(r"WebSocket DISCONNECT /ws/chat/lobby/ \[127\.0\.0\.1:\d+\]")
    assert "Traceback" not in server.output()


@needs_server
def test_runserver_serves_no_static_files_without_debug(project: Path, runserver) -> None:
    port = free_port()
    server = runserver(project, "--noreload", str(port), DJANGO_DEBUG="0")
    server.wait_listening(port)
    assert http_get(f"http://127.0.0.1:{port}/static/chat/room.js").status_code == 404
    assert http_get(f"http://127.0.0.1:{port}/").status_code == 200


@needs_server
def test_runserver_insecure_serves_static_files_without_debug(project: Path, runserver) -> None:
    port = free_port()
    server = runserver(project, "--noreload", "--insecure", str(port), DJANGO_DEBUG="0")
    server.wait_listening(port)
    assert http_get(f"http://127.0.0.1:{port}/static/chat/room.js").status_code == 200


@needs_server
def test_runserver_nostatic_serves_no_static_files(project: Path, runserver) -> None:
    # Without DEBUG: in DEBUG the example's application serves them itself.
    port = free_port()
    server = runserver(
        project, "--noreload", "--nostatic", "--insecure", str(port), DJANGO_DEBUG="0"
    )
    server.wait_listening(port)
    assert http_get(f"http://127.0.0.1:{port}/static/chat/room.js").status_code == 404
    assert http_get(f"http://127.0.0.1:{port}/chat/lobby/").status_code == 200


@needs_server
def test_runserver_reloads_after_a_module_changes(project: Path, runserver) -> None:
    port = free_port()
    server = runserver(project, f"127.0.0.1:{port}")
    first = server.wait_for_output(BANNER.format(addr=r"127\.0\.0\.1", port=port))
    server.wait_listening(port)
    base = f"http://127.0.0.1:{port}"
    assert http_get(base + "/reloaded/").status_code == 404
    socket_before = WSClient(f"ws://127.0.0.1:{port}/ws/chat/lobby/")

    with open(project / "chat_project" / "urls.py", "a") as urls:
        urls.write(
            "\nfrom django.http import HttpResponse\n\n"
            'urlpatterns.append(path("reloaded/", lambda request: HttpResponse("reloaded")))\n'
        )
    server.wait_for_output(r"urls\.py changed, reloading\.", timeout=30)
    server.wait_for_output(BANNER.format(addr=r"127\.0\.0\.1", port=port), start=first.end())
    server.wait_listening(port)
    response = http_get(base + "/reloaded/")
    assert (response.status_code, response.text) == (200, "reloaded")
    # The new process serves WebSockets too; the old connection is gone.
    client = WSClient(f"ws://127.0.0.1:{port}/ws/chat/lobby/")
    client.say("after reload")
    assert client.recv_json()["message"] == "after reload"
    client.close()
    # The old process closed its WebSocket as a service restart before leaving.
    opcode, payload = socket_before.ws.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(payload[:2], "big") == 1012


@needs_server
def test_runserver_warns_about_unapplied_migrations(tmp_path: Path, runserver) -> None:
    project = copy_example(tmp_path)  # not migrated
    port = free_port()
    server = runserver(project, "--noreload", str(port))
    server.wait_listening(port)
    assert re.search(r"You have \d+ unapplied migration\(s\)", server.output())
    assert "python manage.py migrate" in server.output()


def test_check_fails_when_cdaphne_comes_after_staticfiles(project: Path) -> None:
    settings = write_settings(
        project,
        "misordered",
        "INSTALLED_APPS = [a for a in INSTALLED_APPS if a != 'cdaphne']\n"
        "INSTALLED_APPS.insert(INSTALLED_APPS.index('django.contrib.staticfiles') + 1,"
        " 'cdaphne')\n",
    )
    result = manage(project, "check", f"--settings={settings}")
    assert result.returncode == 1
    assert "cdaphne.E001" in result.stderr
    assert (
        "'cdaphne' must be listed before 'django.contrib.staticfiles' in INSTALLED_APPS."
        in result.stderr
    )
    assert "Move 'cdaphne' above 'django.contrib.staticfiles'" in result.stderr


def test_check_passes_with_the_example_settings(project: Path) -> None:
    result = manage(project, "check")
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_runserver_without_asgi_application_is_a_one_line_error(project: Path) -> None:
    settings = write_settings(project, "no_asgi", "del ASGI_APPLICATION\n")
    result = manage(project, "runserver", "--noreload", f"--settings={settings}", timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "CommandError: You have not set ASGI_APPLICATION, which is needed to run the server."
    )


@needs_server
def test_runserver_with_an_unimportable_asgi_application_is_a_one_line_error(
    project: Path,
) -> None:
    settings = write_settings(
        project, "bad_asgi", "ASGI_APPLICATION = 'chat_project.missing.application'\n"
    )
    result = manage(project, "runserver", "--noreload", str(free_port()), f"--settings={settings}")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "CommandError: Cannot import ASGI_APPLICATION module 'chat_project.missing': "
        "No module named 'chat_project.missing'"
    )


@needs_server
def test_runserver_reloader_waits_for_a_fix_of_a_broken_asgi_module(
    project: Path, runserver
) -> None:
    asgi = project / "chat_project" / "asgi.py"
    good = asgi.read_text()
    asgi.write_text(good + "\nsyntax error(\n")
    port = free_port()
    server = runserver(project, f"127.0.0.1:{port}")
    error = server.wait_for_output(
        r"Error: Cannot import ASGI_APPLICATION module 'chat_project\.asgi': "
        r"SyntaxError: .+ \(.*asgi\.py, line \d+\)"
    )
    server.wait_for_output("Waiting for a file change to restart the server.")
    assert "Traceback" not in server.output()
    # The reloader polls once a second: let it see the broken file first.
    time.sleep(2.5)
    asgi.write_text(good)
    server.wait_for_output(BANNER.format(addr=r"127\.0\.0\.1", port=port), start=error.end())
    server.wait_listening(port)
    assert http_get(f"http://127.0.0.1:{port}/").status_code == 200


@needs_server
def test_runserver_on_a_busy_port_is_a_one_line_error(project: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = manage(project, "runserver", "--noreload", f"127.0.0.1:{port}", timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "Error: That port is already in use."


@needs_server
@pytest.mark.parametrize(
    "addrport, connect_host, shown",
    [
        ("{port}", "127.0.0.1", r"127\.0\.0\.1"),
        ("0.0.0.0:{port}", "127.0.0.1", r"0\.0\.0\.0"),
        ("0:{port}", "127.0.0.1", r"0\.0\.0\.0"),
        ("localhost:{port}", "127.0.0.1", "localhost"),
        pytest.param(
            "[::1]:{port}",
            "::1",
            r"\[::1\]",
            marks=pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback"),
        ),
    ],
)
def test_runserver_address_forms(
    project: Path, runserver, addrport: str, connect_host: str, shown: str
) -> None:
    port = free_port(connect_host)
    server = runserver(project, "--noreload", addrport.format(port=port))
    server.wait_for_output(BANNER.format(addr=shown, port=port))
    server.wait_listening(port, host=connect_host)
    host = f"[{connect_host}]" if ":" in connect_host else connect_host
    assert http_get(f"http://{host}:{port}/").status_code == 200
    client = WSClient(f"ws://{host}:{port}/ws/whoami/", origin="http://localhost")
    assert client.recv_json()["user"] == "anonymous"
    client.close()


@needs_server
def test_runserver_force_script_name_becomes_root_path(project: Path, runserver) -> None:
    settings = write_settings(project, "prefixed", "FORCE_SCRIPT_NAME = '/prefix'\n")
    port = free_port()
    server = runserver(project, "--noreload", str(port), f"--settings={settings}")
    server.wait_listening(port)
    page = http_get(f"http://127.0.0.1:{port}/prefix/chat/lobby/")
    assert page.status_code == 200
    assert 'href="/prefix/"' in page.text
    client = WSClient(f"ws://127.0.0.1:{port}/prefix/ws/whoami/")
    hello = client.recv_json()
    client.close()
    assert hello["root_path"] == "/prefix"
    assert hello["path"] == "/prefix/ws/whoami/"


def test_runserver_noasgi_runs_djangos_wsgi_server(project: Path, runserver) -> None:
    port = free_port()
    server = runserver(project, "--noreload", "--noasgi", str(port))
    server.wait_for_output(rf"Starting (WSGI )?development server at http://127\.0\.0\.1:{port}/")
    server.wait_listening(port)
    assert http_get(f"http://127.0.0.1:{port}/chat/lobby/").status_code == 200
    assert http_get(f"http://127.0.0.1:{port}/static/chat/room.js").status_code == 200
    with pytest.raises(websocket.WebSocketException):
        WSClient(f"ws://127.0.0.1:{port}/ws/chat/lobby/")
    assert "ASGI/cdaphne" not in server.output()


def test_runserver_help_lists_the_cdaphne_options(project: Path) -> None:
    result = manage(project, "runserver", "--help")
    assert result.returncode == 0
    for option in ("--noasgi", "--nostatic", "--insecure", "--noreload", "--http_timeout"):
        assert option in result.stdout
    assert "cdaphne" in result.stdout


@needs_server
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_runserver_noreload_stops_cleanly_on_a_signal(
    project: Path, runserver, signum: int
) -> None:
    port = free_port()
    server = runserver(project, "--noreload", str(port))
    server.wait_listening(port)
    client = WSClient(f"ws://127.0.0.1:{port}/ws/chat/lobby/")
    server.proc.send_signal(signum)
    assert server.wait_exit(timeout=15) == 0
    opcode, payload = client.ws.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(payload[:2], "big") == 1012
    assert "Traceback" not in server.output()


@needs_server
def test_runserver_reloader_watches_the_module_with_a_failing_import(
    project: Path, runserver
) -> None:
    # A module that only the ASGI application imports (the URLconf does not,
    # or the system checks would fail first, with Django's own traceback).
    extra = project / "chat" / "extra.py"
    extra.write_text("import no_such_package_here  # noqa\n")
    asgi = project / "chat_project" / "asgi.py"
    asgi.write_text(asgi.read_text() + "\nimport chat.extra  # noqa\n")
    port = free_port()
    server = runserver(project, f"127.0.0.1:{port}")
    error = server.wait_for_output(
        r"Error: Cannot import ASGI_APPLICATION module 'chat_project\.asgi': "
        r"No module named 'no_such_package_here'"
    )
    assert "Traceback" not in server.output()
    # chat.extra is not in sys.modules after the failed import: the reloader
    # must still watch it.
    time.sleep(2.5)
    extra.write_text("")
    server.wait_for_output(BANNER.format(addr=r"127\.0\.0\.1", port=port), start=error.end())
    server.wait_listening(port)
    client = WSClient(f"ws://127.0.0.1:{port}/ws/chat/lobby/")
    client.say("fixed")
    assert client.recv_json()["message"] == "fixed"
    client.close()
