"""Per-core busy time from /proc/stat, to show whether the server or the client was saturated."""

from pathlib import Path


def _snapshot() -> dict[int, tuple[int, int]]:
    """cpu index -> (busy jiffies, total jiffies)."""
    out: dict[int, tuple[int, int]] = {}
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        values = [int(v) for v in fields[:8]]
        idle = values[3] + values[4]  # idle + iowait
        out[int(name[3:])] = (sum(values) - idle, sum(values))
    return out


class CoreSampler:
    """Busy percentage of each core between start() and stop()."""

    def __init__(self) -> None:
        self._start = _snapshot()

    def stop(self) -> dict[str, float]:
        end = _snapshot()
        busy: dict[str, float] = {}
        for cpu, (b1, t1) in end.items():
            b0, t0 = self._start.get(cpu, (b1, t1))
            busy[str(cpu)] = round(100.0 * (b1 - b0) / (t1 - t0), 1) if t1 > t0 else 0.0
        return busy
