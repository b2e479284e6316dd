"""Drive bench/rate_client.py (fixed-rate HTTP latency, in the peer venv) from the runner."""

import json
import subprocess
from typing import Any

from . import env
from .servers import CLIENT_CORE, HOST, pin

CLIENT = env.BENCH / "rate_client.py"


class RateClientError(RuntimeError):
    """The client failed or printed no summary."""


def run(port: int, rate: int, connections: int, duration: int) -> dict[str, Any]:
    """One fixed-rate run; returns the client's JSON report."""
    cmd = [
        *pin(CLIENT_CORE), str(env.peer_python()), str(CLIENT), "--host", HOST,
        "--port", str(port), "--rate", str(rate), "--connections", str(connections),
        "--duration", str(duration),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 40)
    except subprocess.TimeoutExpired as exc:
        raise RateClientError(f"rate client did not finish within {duration + 40} s") from exc
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RATEJSON ")), None)
    if line is None:
        raise RateClientError(f"rate client exited {proc.returncode}: {proc.stderr[-600:]}")
    data: dict[str, Any] = json.loads(line[len("RATEJSON ") :])
    return data
