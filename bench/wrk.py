"""Run wrk (pinned to the client core) and parse the JSON line of bench/wrk.lua."""

import json
import shutil
import subprocess
from dataclasses import dataclass

from . import env
from .servers import CLIENT_CORE, pin

SCRIPT = env.BENCH / "wrk.lua"


@dataclass
class WrkResult:
    """One wrk run: responses per second, errors, latency and core usage."""

    rps: float
    requests: int
    errors: dict[str, int]
    latency_ms: dict[str, float]

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict[str, object]:
        return {
            "rps": round(self.rps, 1),
            "requests": self.requests,
            "errors": self.errors,
            "latency_ms": self.latency_ms,
        }


class WrkError(RuntimeError):
    """wrk failed to run or printed no summary."""


def available() -> bool:
    return shutil.which("wrk") is not None


def run(
    url: str,
    duration: int,
    connections: int,
    depth: int = 1,
    timeout_s: int = 2,
    pinned: bool = True,
) -> WrkResult:
    """One bounded wrk run: -t 1, `connections` connections, `duration` seconds.

    pinned=False lets wrk run on any core (the --workers scenarios share both)."""
    cmd = [
        *(pin(CLIENT_CORE) if pinned else []), "wrk", "-t", "1", "-c", str(connections),
        "-d", f"{duration}s",
        "--timeout", f"{timeout_s}s", "-s", str(SCRIPT), url, "--", str(depth),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30)
    except subprocess.TimeoutExpired as exc:
        raise WrkError(f"wrk did not finish within {duration + 30} s") from exc
    except OSError as exc:
        raise WrkError(f"cannot run wrk: {exc}") from exc
    line = next((x for x in proc.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise WrkError(f"wrk exited {proc.returncode}: {(proc.stderr or proc.stdout)[-500:]}")
    data = json.loads(line[len("WRKJSON ") :])
    seconds = data["duration_us"] / 1e6
    lat = data["latency_us"]
    return WrkResult(
        rps=data["requests"] / seconds if seconds > 0 else 0.0,
        requests=data["requests"],
        errors={k: int(v) for k, v in data["errors"].items()},
        latency_ms={k: round(float(v) / 1000.0, 3) for k, v in lat.items()},
    )
