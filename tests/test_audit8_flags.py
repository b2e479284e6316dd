"""Every command-line flag with a bad value: one clear line on stderr naming
the flag, a non-zero exit, no traceback, and no server (or worker) started."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import ROOT
from .test_cli import assert_one_clear_line

APP = "tests.apps.http1:app"

# Flags taking a number of seconds, bytes or a count: each gets a word, and
# the values its own checks refuse.
SECONDS = ["--websocket_timeout", "--websocket_connect_timeout", "--ping-interval",
           "--ping-timeout", "--application-close-timeout", "-t", "--timeout-keep-alive",
           "--header-timeout", "--body-rate-grace", "--half-close-grace",
           "--timeout-graceful-shutdown",
           "--timeout-lifespan-shutdown", "--worker-healthcheck-timeout"]
SIZES = ["--websocket-max-message-size", "--websocket-max-frame-size", "--max-body-size",
         "--body-buffer-size", "--write-buffer-size", "--max-header-size", "--max-header-count",
         "--min-body-rate", "--pubsub-max-queue", "--pubsub-max-topics", "--pubsub-max-inbox",
         "--pubsub-max-inbox-bytes", "--pubsub-redis-max-queue", "--tls-read-size",
         "--read-size"]
WHOLE = ["-p", "--fd", "--workers", "--max-requests", "--max-requests-jitter", "-v",
         "--backlog", "--limit-concurrency", "--ws-deflate-window-bits",
         "--ws-deflate-mem-level"]


def _name(flag: str) -> str:
    """What the line says for flag: its option name, or the flag itself."""
    return {"-p": "port", "-t": "http", "-v": "verbosity", "--fd": "fd",
            "--timeout-graceful-shutdown": "graceful", "--timeout-lifespan-shutdown": "lifespan",
            }.get(flag, flag.lstrip("-").replace("-", "_").split("_")[0])


CASES = (
    [(f, "abc") for f in SECONDS + SIZES + WHOLE]
    + [(f, "nan") for f in SECONDS]
    + [(f, "1e400") for f in SECONDS]
    + [(f, "-1") for f in SIZES + ["--workers", "--max-requests", "--max-requests-jitter",
                                   "-p", "--fd", "-v", "--ws-deflate-window-bits",
                                   "--ws-deflate-mem-level", "--header-timeout",
                                   "--timeout-keep-alive", "--worker-healthcheck-timeout"]]
    + [(f, "9" * 30) for f in SIZES + WHOLE]
    + [(f, "1.5") for f in SIZES + WHOLE if f != "--min-body-rate"]
    + [
        # A typo (a pasted number) forked until the machine ran out of processes.
        ("--workers", "1000000"),
        # An OverflowError traceback from socket.socket(fileno=...).
        ("--fd", "2147483648"),
        # Every request got a 431: the head cannot be 0 bytes.
        ("--max-header-size", "0"),
        ("--body-buffer-size", "0"),
        ("--write-buffer-size", "0"),
        ("--tls-read-size", "0"),
        ("--read-size", "0"),
        ("--workers", "0"),
        ("--max-requests", "0"),
        ("--ws-deflate-window-bits", "8"),
        ("--ws-deflate-window-bits", "16"),
        ("--ws-deflate-mem-level", "0"),
        ("--ws-deflate-mem-level", "10"),
        ("-p", "65536"),
        ("-v", "4"),
        ("--ssl-cert-reqs", "3"),
        ("--lifespan", "maybe"),
        ("--log-level", "loud"),
        ("--ws-per-message-deflate", "perhaps"),
        # Negative seconds were taken silently, and read as 0 (off) by the
        # core: --application-close-timeout -5 never cancelled the app.
        ("--ping-interval", "-5"),
        ("--ping-timeout", "-5"),
        ("--websocket_connect_timeout", "-5"),
        ("--application-close-timeout", "-5"),
        ("-t", "-5"),
        ("--timeout-graceful-shutdown", "-5"),
        ("--timeout-lifespan-shutdown", "-5"),
        ("--limit-concurrency", "-5"),
        ("--backlog", "-5"),
    ]
)


def _run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cdaphne", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL, env=env)


@pytest.mark.parametrize(("flag", "value"), CASES)
def test_bad_value_is_one_line_naming_the_flag(flag, value):
    argv = ("--lifespan", "off", flag, value, APP)
    if flag != "-p":
        argv = ("-p", "0", *argv)
    proc = _run(*argv)
    assert_one_clear_line(proc, _name(flag))
    assert "Listening" not in proc.stderr


def test_workers_from_the_environment_are_bounded_too():
    proc = _run("-p", "0", "--lifespan", "off", APP,
                env={**os.environ, "WEB_CONCURRENCY": "1000000"})
    assert_one_clear_line(proc, "WEB_CONCURRENCY")


@pytest.mark.parametrize("fd", ["9999", "0"])
def test_an_fd_that_is_not_a_socket_is_named(fd):
    """It said "[Errno 9] Bad file descriptor" without naming --fd (with
    --workers it did)."""
    assert_one_clear_line(_run("--lifespan", "off", "--fd", fd, APP), f"fd {fd}")


@pytest.mark.parametrize("argv", [
    ("--no-such-flag",),
    ("--ssl-certfile", "/nonexistent/cert.pem"),
    ("--ssl-keyfile", "/nonexistent/key.pem"),
    ("--ssl-ciphers", "HIGH", "--ssl-cert-reqs", "2"),
    ("--ssl-cert-reqs", "2"),
    ("--ssl-ciphers", "HIGH"),  # served plain HTTP, the flag ignored
    ("-e", "ssl:0:privateKey=/nonexistent/key.pem"),
    ("-e", "bogus:0"),
    ("-e", "fd:fileno=99999999999999999999"),
    ("-b", "no.such.host.invalid"),
    ("--access-log", "/nonexistent/dir/access.log"),
    ("--access-log", "-", "--no-access-log"),
    ("--max-requests", "5"),
    ("--reuse-port",),
    ("--proxy-headers", "--forwarded-allow-ips", "1.2.3.4/99"),
    ("--pubsub-redis", "http://localhost"),
    # It served, with a "--- Logging error ---" traceback for every log line.
    ("--log-fmt", "%(nope)s"),
    ("--log-fmt", "%(message)d"),
    # Went out as written: a header line of the operator's own in every response.
    ("-s", "x\r\nX-Evil: 1"),
    ("-s", "x\x01y"),
    # An empty socket path served TCP on port 8000 instead (Daphne and
    # uvicorn do the same: the path is tested for truth).
    ("-u", ""),
    ("--uds", ""),
])
def test_bad_or_conflicting_flags_are_one_line(argv):
    proc = _run("-p", "0", "--lifespan", "off", *argv, APP)
    assert_one_clear_line(proc)
    assert "Listening" not in proc.stderr
