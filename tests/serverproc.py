"""Start a real cdaphne process for a test and learn its port from its log."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"Listening on TCP address (\S+):(\d+)")


class ServerProcess:
    """A `python -m cdaphne ...` child; its stderr is kept in `self.log`."""

    def __init__(self, app: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.argv = [sys.executable, "-m", "cdaphne", "-p", "0", *args, app]
        self.env = {**os.environ, **(env or {})}
        self.lines: list[str] = []
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self._ready = threading.Event()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def start(self, timeout: float = 15) -> ServerProcess:
        self.proc = subprocess.Popen(
            self.argv, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(timeout) or not self.port:
            self.stop()
            raise RuntimeError(f"cdaphne did not start:\n{self.log}")
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            m = LISTENING.search(line)
            if m and not self.port:
                self.port = int(m.group(2))
                self._ready.set()
        self._ready.set()

    def url(self, path: str = "/", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def wait_for_log(self, text: str, timeout: float = 5) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log:
                return True
            time.sleep(0.02)
        return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@contextmanager
def serve(app: str, *args: str, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """Serve `app`; on exit, SIGTERM and check the server exited cleanly."""
    server = ServerProcess(app, *args, env=env).start()
    try:
        yield server
    finally:
        code = server.stop()
    assert code == 0, f"cdaphne exited with {code}:\n{server.log}"
    assert "Segmentation fault" not in server.log
