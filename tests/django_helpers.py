"""Helpers for the tests of the chat example and the Django integration:
real server processes, real clients (websocket-client, httpx, Selenium)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import websocket

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_DIR = REPO / "examples" / "chat"
ASGI_APP = "chat_project.asgi:application"


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def ipv6_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def cdaphne_server_available() -> bool:
    return importlib.util.find_spec("cdaphne.server") is not None


def daphne_available() -> bool:
    return importlib.util.find_spec("daphne") is not None


def copy_example(dest: Path) -> Path:
    """A private copy of the example project, so tests may edit it."""
    target = dest / "chat"
    shutil.copytree(
        EXAMPLE_DIR,
        target,
        ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3", "staticfiles"),
    )
    return target


def example_env(project: Path, **extra: str) -> dict[str, str]:
    """Environment of a server process: unbuffered, this checkout's package
    importable, the database inside the project."""
    env = dict(os.environ)
    for name in ("DJANGO_SETTINGS_MODULE", "CHAT_CHANNEL_LAYER", "DJANGO_DEBUG"):
        env.pop(name, None)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "python"), env.get("PYTHONPATH", "")) if p
    )
    env["CHAT_DATABASE"] = str(project / "db.sqlite3")
    env.update(extra)
    return env


def manage(
    project: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=project,
        env=env or example_env(project),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def migrate(project: Path, env: dict[str, str] | None = None) -> None:
    result = manage(project, "migrate", "--noinput", "-v", "0", env=env)
    assert result.returncode == 0, result.stderr


class ServerProcess:
    """A server started as a real process in its own session (so that the
    autoreloader's child goes away with it); output goes to a file."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "w+b")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log_path.read_bytes().decode("utf-8", "replace")

    def wait_for_output(self, pattern: str, timeout: float = 30, start: int = 0) -> re.Match[str]:
        """Wait until ``pattern`` (a regex) appears in the output after ``start``."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.compile(pattern).search(self.output(), start)
            if match:
                return match
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"process exited with {self.proc.returncode} before {pattern!r}:\n"
                    + self.output()
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {timeout}s:\n" + self.output())
            time.sleep(0.05)

    def wait_listening(self, port: int, host: str = "127.0.0.1", timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((host, port), timeout=1):
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"server exited with {self.proc.returncode}:\n" + self.output()
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"server not listening within {timeout}s:\n" + self.output())
            time.sleep(0.05)

    def wait_exit(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> int:
        """SIGTERM to the whole session (SIGINT may be ignored when the tests
        run in the background), then SIGKILL if needed."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        # The reloader's child may outlive its parent by a moment.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()
        return self.proc.returncode


def asgi_server_command(kind: str, port: int, host: str = "127.0.0.1") -> list[str]:
    """The command line of a standalone server serving the example."""
    if kind not in ("cdaphne", "daphne"):
        raise ValueError(kind)
    return [sys.executable, "-m", kind, "-b", host, "-p", str(port), ASGI_APP]


def require_server(kind: str) -> None:
    if kind == "daphne" and not daphne_available():
        pytest.skip("daphne (the reference server) is not installed")
    if kind == "cdaphne" and not cdaphne_server_available():
        pytest.skip("cdaphne.server does not exist yet")


@contextmanager
def redis_server(tmp_path: Path) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port; yields its URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


class WSClient:
    """A websocket-client connection speaking the chat's JSON."""

    def __init__(self, url: str, timeout: float = 10, **kwargs: Any) -> None:
        self.url = url
        self.ws = websocket.create_connection(url, timeout=timeout, **kwargs)

    def send_json(self, data: Any) -> None:
        self.ws.send(json.dumps(data))

    def recv_json(self, timeout: float | None = None) -> Any:
        if timeout is not None:
            self.ws.settimeout(timeout)
        return json.loads(self.ws.recv())

    def say(self, message: str) -> None:
        self.send_json({"message": message})

    def expect_nothing(self, within: float = 0.5) -> None:
        self.ws.settimeout(within)
        try:
            data = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            return
        finally:
            self.ws.settimeout(10)
        raise AssertionError(f"unexpected message {data!r}")

    def close(self) -> None:
        self.ws.close()


def http_get(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(url, timeout=10, **kwargs)


def read_sse_events(response: httpx.Response, count: int | None = None) -> list[dict[str, str]]:
    """The first ``count`` events of a text/event-stream response (default: all
    until the stream ends)."""
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if current:
                events.append(current)
                current = {}
                if len(events) == count:
                    break
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        current[field] = value[1:] if value.startswith(" ") else value
    return events


# --- browsers ----------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def browser_available() -> bool:
    return (
        importlib.util.find_spec("selenium") is not None
        and os.path.exists(CHROMIUM)
        and os.path.exists(CHROMEDRIVER)
    )


def chromium_driver(user_data_dir: Path) -> Any:
    """Headless Debian Chromium through Debian's chromedriver: nothing is
    downloaded, nothing outside this machine is contacted."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
        f"--user-data-dir={user_data_dir}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
