"""A real cdaphne process for a test: `python -m cdaphne ...` from the
repository root, its stderr collected by a thread, its port read from the
`Listening on ...` line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LISTEN_RE = re.compile(r"Listening on (?:TCP address (\S+):(\d+)|(.+))")


class ServerProcess:
    """A cdaphne subprocess; stderr is collected by a thread."""

    def __init__(self, argv: list[str], *, pass_fds: tuple[int, ...] = (),
                 env: dict[str, str] | None = None, cmd: list[str] | None = None,
                 cwd: Path = ROOT) -> None:
        self.argv = argv
        full_env = dict(os.environ)
        full_env.pop("PYTHONPATH", None)
        full_env["PYTHONUNBUFFERED"] = "1"
        if env:
            full_env.update(env)
        # cmd: how to start cdaphne (tests/test_wheel.py: another venv's).
        self.proc = subprocess.Popen(
            [*(cmd or [sys.executable, "-m", "cdaphne"]), *argv],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=pass_fds,
            env=full_env,
        )
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self._out: list[bytes] = []
        self._threads = [
            threading.Thread(target=self._pump_err, daemon=True),
            threading.Thread(target=self._pump_out, daemon=True),
        ]
        for t in self._threads:
            t.start()
        self.host = "127.0.0.1"
        self.port = 0
        self.listening: list[str] = []
        self.expected_exit: int | None = 0
        self.stopped = False

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._cond:
                self._lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _pump_out(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._out.append(raw)

    # ---- logs --------------------------------------------------------
    @property
    def log(self) -> str:
        with self._cond:
            return "\n".join(self._lines)

    @property
    def stdout(self) -> str:
        return b"".join(self._out).decode("utf-8", "replace")

    def wait_log(self, pattern: str, timeout: float = 5.0, count: int = 1) -> list[re.Match]:
        """Wait until `pattern` (a regex) matched `count` stderr lines."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for line in self._lines if (m := rx.search(line))]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    raise AssertionError(
                        f"no {count} log line(s) matching {pattern!r} within {timeout}s "
                        f"(exit={self.proc.poll()}):\n{self.log_tail()}")
                self._cond.wait(left)

    def log_tail(self, n: int = 40) -> str:
        with self._cond:
            return "\n".join(self._lines[-n:])

    def wait_listening(self, count: int = 1, timeout: float = 10.0) -> None:
        matches = self.wait_log(r"Listening on ", timeout=timeout, count=count)
        for line in self.log.splitlines():
            m = LISTEN_RE.search(line)
            if m:
                self.listening.append(line)
                if m.group(1) and not self.port:
                    self.host, self.port = m.group(1), int(m.group(2))
        assert matches

    # ---- lifetime ----------------------------------------------------
    def url(self, path: str = "/") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 10.0) -> int:
        self.stopped = True
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"server did not exit within {timeout}s:\n{self.log_tail()}") \
                from None
        for t in self._threads:
            t.join(5)
        return rc

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.stopped = True
        return self.wait(timeout)

    def ws_url(self, path: str = "/") -> str:
        return "ws" + self.url(path)[4:]


def start_server(app: str, *flags: str) -> ServerProcess:
    """Start `app` on a free port and wait until it listens."""
    proc = ServerProcess(["-p", "0", *flags, app])
    proc.wait_listening()
    return proc
