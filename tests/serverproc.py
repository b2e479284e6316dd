"""A real cdaphne process for a test: `python -m cdaphne ...` from the
repository root, its stderr collected by a thread, its port read from the
`Listening on ...` line."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

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


# ---- the sanitized run (`make test-asan`) ----------------------------------

def _is_python(program: str) -> bool:
    """True if `program` runs CPython: the interpreter, or a script whose
    shebang names one (console scripts such as .venv/bin/cdaphne)."""
    path = program if os.sep in program else shutil.which(program)
    if not path:
        return False
    real = os.path.realpath(path)
    if os.path.basename(real).startswith("python"):
        return True
    try:
        with open(real, "rb") as f:
            first = f.readline(256)
    except OSError:
        return False
    return first.startswith(b"#!") and b"python" in first


def strip_asan_preload_for_native_programs() -> None:
    """Under `make test-asan` (libasan in LD_PRELOAD), start every program
    that is not Python without the preload: the sanitizer runtime is for
    cdaphne's extension, and native programs such as chromedriver abort
    under it. Python children keep it, and with it the sanitized build."""
    preload = os.environ.get("LD_PRELOAD", "")
    if "libasan" not in preload or getattr(subprocess.Popen, "_cdaphne_asan", False):
        return
    kept = " ".join(p for p in preload.split() if "libasan" not in p)
    orig_init = subprocess.Popen.__init__

    def __init__(self: subprocess.Popen, args: Any, *a: Any, **kw: Any) -> None:
        program = kw.get("executable")
        if program is None:
            if isinstance(args, (str, bytes)):
                words = shlex.split(os.fsdecode(args))
                program = words[0] if words else ""
            elif isinstance(args, os.PathLike):
                program = os.fspath(args)
            else:
                program = os.fsdecode(list(args)[0])
        if not kw.get("shell") and not _is_python(os.fsdecode(program)):
            env = dict(os.environ if kw.get("env") is None else kw["env"])
            if kept:
                env["LD_PRELOAD"] = kept
            else:
                env.pop("LD_PRELOAD", None)
            kw["env"] = env
        orig_init(self, args, *a, **kw)

    subprocess.Popen.__init__ = __init__  # type: ignore[method-assign]
    subprocess.Popen._cdaphne_asan = True  # type: ignore[attr-defined]
    # Python grandchildren (the example's `manage.py test`) start
    # chromedriver themselves: the example takes its path from $CHROMEDRIVER.
    if "CHROMEDRIVER" not in os.environ and os.path.exists("/usr/bin/chromedriver"):
        wrapper = Path(tempfile.mkdtemp(prefix="cdaphne-asan-")) / "chromedriver"
        wrapper.write_text("#!/bin/sh\nunset LD_PRELOAD\nexec /usr/bin/chromedriver \"$@\"\n")
        wrapper.chmod(0o755)
        os.environ["CHROMEDRIVER"] = str(wrapper)
