"""Drive bench/ws_client.py (picows, in the peer venv) from the runner."""

import json
import os
import select
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from . import env
from .servers import CLIENT_CORE, pin

CLIENT = env.BENCH / "ws_client.py"


class WsClientError(RuntimeError):
    """A client process failed or printed no summary."""


@dataclass
class EchoResult:
    """Messages per second over all client processes, with what was checked."""

    rate: float
    messages: int
    connected: int
    errors: dict[str, int]
    first_error: str
    client_cpu_pct: float
    client: str  # "c" (bench/ws_echo_client.c) or "picows" (bench/ws_client.py)
    window_client_cpu_pct: float = 0.0  # fanout: the client's CPU between its marks

    def as_dict(self) -> dict[str, Any]:
        return {
            "msgs_per_s": round(self.rate, 1),
            "messages": self.messages,
            "connected": self.connected,
            "errors": self.errors,
            "first_error": self.first_error,
            "client_process_cpu_pct": self.client_cpu_pct,
            "client": self.client,
        }


def _parse(stdout: str, stderr: str, code: int | None) -> dict[str, Any]:
    line = next((x for x in stdout.splitlines() if x.startswith("WSJSON ")), None)
    if line is None:
        raise WsClientError(f"ws client exited {code}: {(stderr or stdout)[-600:]}")
    data: dict[str, Any] = json.loads(line[len("WSJSON ") :])
    return data


def _communicate_marked(
    child: subprocess.Popen[bytes], timeout: float, marks: Callable[[str], None]
) -> tuple[bytes, bytes]:
    """child.communicate(), calling marks(word) for each "WSMARK word" line
    of its stdout as it comes (those lines are left out of the result)."""
    assert child.stdout is not None and child.stderr is not None
    out, err = bytearray(), bytearray()
    buf = b""
    streams = {child.stdout.fileno(): out, child.stderr.fileno(): err}
    deadline = time.monotonic() + timeout
    while streams:
        left = deadline - time.monotonic()
        if left <= 0:
            child.kill()
            break
        ready, _, _ = select.select(list(streams), [], [], left)
        for fd in ready:
            data = os.read(fd, 65536)
            if not data:
                del streams[fd]
            elif fd != child.stdout.fileno():
                err += data
            else:
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.startswith(b"WSMARK "):
                        marks(line[len(b"WSMARK ") :].decode().strip())
                    else:
                        out += line + b"\n"
    out += buf
    child.wait()
    return bytes(out), bytes(err)


def echo(
    url: str,
    connections: int,
    duration: int,
    size: int,
    procs: int,
    kind: str = "echo",
    pinned: bool = True,
    c_client: Path | None = None,
    marks: Callable[[str], None] | None = None,
) -> EchoResult:
    """`procs` client processes on the client core, `connections` echo loops in all.

    kind "fanout": one process, `connections` members of one chat room.
    pinned=False: the clients run on any core (the --workers scenarios).
    c_client: the compiled bench/ws_echo_client.c, used for kind "echo"
    instead of the picows client (same protocol, checks and report line).
    marks (kind "fanout"): called with "start" and "end" when the client
    begins and ends its measured window.
    """
    if kind == "fanout":
        procs = 1
    procs = max(1, min(procs, connections))
    share = [connections // procs + (1 if i < connections % procs else 0) for i in range(procs)]
    children = []
    first = 0
    for n in share:
        program = (
            [str(c_client)]
            if c_client is not None and kind == "echo"
            else [str(env.peer_python()), str(CLIENT)]
        )
        cmd = [
            *(pin(CLIENT_CORE) if pinned else []), *program, kind,
            "--url", url,
            "--connections", str(n), "--duration", str(duration), "--size", str(size),
            "--first-id", str(first),
        ]  # fmt: skip
        first += n
        children.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outputs = []
    for child in children:
        if marks is not None and kind == "fanout":
            out, err = _communicate_marked(child, duration + 40, marks)
            outputs.append(_parse(out.decode(), err.decode(), child.returncode))
            continue
        try:
            out, err = child.communicate(timeout=duration + 40)
        except subprocess.TimeoutExpired:
            child.kill()
            out, err = child.communicate()
        outputs.append(_parse(out.decode(), err.decode(), child.returncode))
    messages = sum(int(o["messages"]) for o in outputs)
    elapsed = max(float(o["elapsed_s"]) for o in outputs)
    errors = {
        "connect": sum(int(o["connect_failures"]) for o in outputs),
        "mismatch": sum(int(o["mismatches"]) for o in outputs),
        "closed_early": sum(int(o["closed_early"]) for o in outputs),
    }
    cpu = sum(float(o["client_cpu_s"]) for o in outputs)
    return EchoResult(
        rate=messages / elapsed if elapsed > 0 else 0.0,
        messages=messages,
        connected=sum(int(o["connected"]) for o in outputs),
        errors=errors,
        first_error=next((str(o["first_error"]) for o in outputs if o["first_error"]), ""),
        client_cpu_pct=round(100.0 * cpu / elapsed, 1) if elapsed > 0 else 0.0,
        client=str(outputs[0].get("client", "picows")),
        window_client_cpu_pct=round(
            100.0 * sum(float(o.get("window_client_cpu_s", 0.0)) for o in outputs) / elapsed, 1
        )
        if elapsed > 0
        else 0.0,
    )


class IdleClients:
    """N open, silent WebSockets, held until close()."""

    def __init__(self, url: str, connections: int, hold: float) -> None:
        cmd = [
            *pin(CLIENT_CORE), str(env.peer_python()), str(CLIENT), "idle", "--url", url,
            "--connections", str(connections), "--hold", str(hold),
            # BENCH_WS_EXTENSIONS: e.g. "permessage-deflate; client_max_window_bits"
            # (what browsers offer) for the idle memory with deflate agreed.
            "--extensions", os.environ.get("BENCH_WS_EXTENSIONS", ""),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        """Wait until the client reports how many connections it holds."""
        stdout: IO[str] | None = self.proc.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], timeout)
        line = stdout.readline() if ready else f"no report within {timeout:.0f} s\n"
        if not line.startswith("WSJSON "):
            self.close()
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise WsClientError(f"idle client failed: {line}{err[-600:]}")
        data: dict[str, Any] = json.loads(line[len("WSJSON ") :])
        return data

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
