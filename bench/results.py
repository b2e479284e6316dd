"""The result records a run collects, and their JSON form."""

import statistics
from dataclasses import dataclass, field
from typing import Any

OK = "ok"
ERROR = "error"  # served, but with errors: the numbers are not a result
UNAVAILABLE = "unavailable"  # could not start, or did not answer correctly
SKIPPED = "skipped"


@dataclass
class ServerResult:
    """One server in one scenario: its runs, their median, or why there is none."""

    status: str = OK
    reason: str = ""
    values: list[float] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def add_errors(self, errors: dict[str, int]) -> None:
        for key, count in errors.items():
            if count:
                self.errors[key] = self.errors.get(key, 0) + count

    def fail(self, status: str, reason: str) -> None:
        """Keep the first failure: later ones are usually its consequences."""
        if self.status == OK:
            self.status = status
            self.reason = reason

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    def finish(self) -> None:
        if self.errors and self.status == OK:
            total = sum(self.errors.values())
            detail = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items()))
            self.fail(ERROR, f"{total} errors ({detail})")

    def as_dict(self) -> dict[str, Any]:
        med = self.median
        return {
            "status": self.status,
            "reason": self.reason,
            "median": round(med, 2) if med is not None else None,
            "min": round(min(self.values), 2) if self.values else None,
            "max": round(max(self.values), 2) if self.values else None,
            "values": [round(v, 2) for v in self.values],
            "errors": self.errors,
            "runs": self.runs,
            **self.extra,
        }


@dataclass
class ScenarioResult:
    """One scenario: what was measured, how, and each server's result."""

    key: str
    title: str
    unit: str
    higher_is_better: bool = True
    params: dict[str, Any] = field(default_factory=dict)
    servers: dict[str, ServerResult] = field(default_factory=dict)
    status: str = OK
    reason: str = ""
    raw: Any = None  # a sub-benchmark's own JSON (the channel layer)
    loadavg: list[float] = field(default_factory=list)  # before it started: how busy the box was
    reference: str = "cdaphne"  # the ratios' reference server
    second_reference: str = "uvicorn"

    def server(self, name: str) -> ServerResult:
        return self.servers.setdefault(name, ServerResult())

    def as_dict(self) -> dict[str, Any]:
        for result in self.servers.values():
            result.finish()
        out: dict[str, Any] = {
            "title": self.title,
            "unit": self.unit,
            "higher_is_better": self.higher_is_better,
            "status": self.status,
            "reason": self.reason,
            "params": self.params,
            "loadavg_before": self.loadavg,
            "reference": self.reference,
            "second_reference": self.second_reference,
            "servers": {name: r.as_dict() for name, r in self.servers.items()},
        }
        if self.raw is not None:
            out["raw"] = self.raw
        return out
