"""The Markdown report: absolute numbers, ratios to cdaphne, and what went wrong where."""

import json
from typing import Any

from .results import OK

REFERENCE = "cdaphne"
SECOND_REFERENCE = "uvicorn"


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit.endswith("/s"):
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or a <= 0 or b <= 0:
        return None
    return a / b


def _cell(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.2f}×"


def _times(ratio: float) -> str:
    return f"{ratio:.2f}×" if ratio < 1 else f"{ratio:.1f}×"


def _notes(res: dict[str, Any]) -> str:
    parts = []
    if res["status"] != OK:
        parts.append(f"**{res['status']}**: {res['reason']}")
        if res.get("median") is not None:
            parts.append(f"(unverified median {res['median']:,.0f})")
    if res.get("summary"):
        parts.append(str(res["summary"]))
    if res["status"] == OK and res.get("first_error"):
        parts.append(str(res["first_error"]))
    text = " ".join(parts).replace("|", "\\|").replace("\n", " ")
    return text[:300] + ("…" if len(text) > 300 else "")


def _ok_median(servers: dict[str, Any], name: str) -> float | None:
    res = servers.get(name)
    if res is None or res["status"] != OK:
        return None
    median: float | None = res["median"]
    return median


def _ok_extra(servers: dict[str, Any], name: str, key: str) -> float | None:
    res = servers.get(name)
    if res is None or res["status"] != OK or key not in res:
        return None
    value: float = res[key]
    return value


def _layer_table(median: dict[str, Any]) -> list[str]:
    """layer_bench.py's medians: metric -> {implementation: value, ..., "ratio": r}."""
    impls = sorted({k for v in median.values() if isinstance(v, dict) for k in v} - {"ratio"})
    lines = [
        "| metric | " + " | ".join(impls) + " | ratio |",
        "|---|" + "---:|" * (len(impls) + 1),
    ]
    for metric, values in median.items():
        if not isinstance(values, dict):
            continue
        cells = [_fmt(values.get(i), "/s") for i in impls]
        ratio = values.get("ratio")
        lines.append(f"| {metric} | " + " | ".join(cells) + f" | {_cell(ratio)} |")
    return lines + ["", "Median of the runs; every run and the parameters are in the JSON.", ""]


def _aio_micro_table(raw: dict[str, Any]) -> list[str]:
    """aio-micro: ops/s and ops per CPU-second per benchmark and loop, ratios to uvloop."""
    loops = ["asyncio", "uvloop", "cdaphne"]
    lines = [
        "| benchmark | " + " | ".join(f"{n} ops/s" for n in loops) + " | cdaphne ÷ uvloop | "
        + " | ".join(f"{n} ops/CPU-s" for n in loops)
        + " | cdaphne ÷ uvloop per CPU-s | cdaphne ÷ asyncio per CPU-s |",
        "|---|" + "---:|" * (2 * len(loops) + 3),
    ]  # fmt: skip
    for bench in raw["benches"].values():
        rows = bench["loops"]

        def med(name: str, key: str = "median", rows: dict[str, Any] = rows) -> float | None:
            row = rows.get(name)
            return row.get(key) if row and row["status"] == OK else None

        def cells(key: str, rows: dict[str, Any] = rows) -> list[str]:
            out = []
            for n in loops:
                row = rows.get(n)
                out.append(_fmt(med(n, key), "/s") if row is None or row["status"] == OK
                           else f"**{row['status']}**")  # fmt: skip
            return out

        c = "per_cpu_s_median"
        lines.append(
            f"| {bench['title']} | " + " | ".join(cells("median"))
            + f" | {_cell(_ratio(med('cdaphne'), med('uvloop')))} | "
            + " | ".join(cells(c))
            + f" | {_cell(_ratio(med('cdaphne', c), med('uvloop', c)))}"
            + f" | {_cell(_ratio(med('cdaphne', c), med('asyncio', c)))} |"
        )  # fmt: skip
    problems = [f"{b}/{n}: {row['reason'][:200]}" for b, bench in raw["benches"].items()
                for n, row in bench["loops"].items() if row["status"] != OK]  # fmt: skip
    lines.append("")
    if problems:
        lines += ["Failed: " + "; ".join(problems).replace("|", "\\|").replace("\n", " "), ""]
    return lines + [
        "Median of the runs. ops/CPU-s: ops per CPU-second of the benchmark's process (all its"
        " threads), the steadier number when the shared machine gives the process only part"
        " of its core. Every run is in the JSON.",
        "",
    ]


def scenario_table(key: str, sc: dict[str, Any]) -> list[str]:
    unit, higher = sc["unit"], sc["higher_is_better"]
    servers: dict[str, Any] = sc["servers"]
    lines = [f"### {sc['title']} (`{key}`)", ""]
    params = ", ".join(f"{k} {v}" for k, v in sc.get("params", {}).items())
    if params:
        load = sc.get("loadavg_before")
        load_text = f" Load average before it: {load}." if load else ""
        lines += [f"Parameters: {params}.{load_text}", ""]
    if sc["status"] != OK:
        lines += [f"**{sc['status']}**: {sc['reason']}", ""]
    raw_median = sc["raw"].get("median") if isinstance(sc.get("raw"), dict) else None
    if key == "aio-micro" and isinstance(sc.get("raw"), dict):
        lines += _aio_micro_table(sc["raw"])
    elif isinstance(raw_median, dict) and raw_median:
        lines += _layer_table(raw_median)
    elif sc.get("raw") is not None:
        raw = json.dumps(sc["raw"], indent=2)
        raw_lines = raw.splitlines()
        if len(raw_lines) > 80:
            raw_lines = raw_lines[:80] + ["… (truncated; the full JSON is in the results file)"]
        lines += ["```json", *raw_lines, "```", ""]
    if not servers:
        return lines
    refname = sc.get("reference", REFERENCE)
    second_name = sc.get("second_reference", SECOND_REFERENCE)
    ref = _ok_median(servers, refname)
    second = _ok_median(servers, second_name)
    vs = f"{refname} ÷ this" if higher else f"this ÷ {refname}"
    vs2 = f"this ÷ {second_name}" if higher else f"{second_name} ÷ this"
    ref_cpu = _ok_extra(servers, refname, "per_server_cpu_s")
    per_cpu = any("per_server_cpu_s" in r for r in servers.values())
    lines += [
        f"| server | median {unit} | runs (min–max) | {vs} | {vs2} | CPU % srv/cli"
        + (f" | per server CPU-s | {refname} ÷ this per CPU-s" if per_cpu else "")
        + " | notes |",
        "|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if per_cpu else "") + "---|",
    ]
    order = sorted(
        servers.items(),
        key=lambda kv: (kv[1]["status"] != OK, -(kv[1]["median"] or 0) if higher
                        else (kv[1]["median"] or float("inf"))),
    )  # fmt: skip
    sentences = []
    for name, res in order:
        ok = res["status"] == OK
        med = res["median"] if ok else None
        r1 = _ratio(ref, med) if higher else _ratio(med, ref)
        r2 = _ratio(med, second) if higher else _ratio(second, med)
        runs = (
            f"{len(res['values'])} ({_fmt(res['min'], unit)}–{_fmt(res['max'], unit)})"
            if res["values"] else "0"
        )  # fmt: skip
        cores = "—"
        if "server_cpu_pct" in res:
            cores = f"{res['server_cpu_pct']:.0f}/{res.get('client_cpu_pct', 0):.0f}"
        vs_ref = "1.00×" if name == refname and ok else _cell(r1)
        cpu_cells = ""
        r3 = None
        if per_cpu:
            mine = res.get("per_server_cpu_s") if ok else None
            r3 = _ratio(ref_cpu, mine)
            cpu_cells = f" | {_fmt(mine, unit)} | {_cell(r3)}"
        lines.append(
            f"| {name} | {_fmt(med, unit)} | {runs} | {vs_ref} | {_cell(r2)} | {cores}"
            f"{cpu_cells} | {_notes(res)} |"
        )
        if name != refname and r1 is not None:
            extra = f" ({_times(r3)} per server CPU-second)" if r3 is not None else ""
            if higher:
                sentences.append(f"{refname} is {_times(r1)} {name}{extra}")
            else:
                sentences.append(f"{name}: {r1:.2f}× {refname}'s {unit}")
    lines.append("")
    if ref is None and refname in servers:
        lines += [f"No ratios to {refname}: it is {servers[refname]['status']}.", ""]
    elif sentences:
        lines += ["; ".join(sentences) + ".", ""]
    return lines


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [
        f"# Benchmark results: `{doc['name']}`",
        "",
        f"Command: `{doc['command']}` — mode **{doc['mode']}**, started {doc['started_utc']},"
        f" took {doc['elapsed_s']:.0f} s, git {doc['git']}.",
        "",
        f"Machine: {m['nproc']} cores, {m['cpu_model']}, {m['memory_gib']} GiB, kernel"
        f" {m['kernel']}; load average at start {m['loadavg_at_start']}."
        f" Servers pinned to core 0 (`taskset -c 0`), load generators to core 1.",
        f" wrk: {m['wrk']}; libuv {m['libuv']}.",
        "",
        "Each number is the median of the runs; servers alternate round-robin within one run."
        " A server with errors (non-2xx, socket errors, echo mismatches, broken pipelining)"
        " gets its errors shown instead of a number. CPU % srv/cli: median CPU time of the"
        " server's process tree and of the load generator, as % of one core, during the runs;"
        " a client near 100% means the client, not the server, may have been the limit.",
        "",
        "## Servers and versions",
        "",
    ]
    for name, desc in doc["servers"].items():
        lines.append(f"- **{name}**: {desc}")
    lines.append("")
    for venv, versions in doc["versions"].items():
        pretty = ", ".join(f"{k} {v}" for k, v in versions.items() if v)
        lines.append(f"- {venv}: {pretty}")
    lines += ["", "## Results", ""]
    for key, sc in doc["scenarios"].items():
        lines += scenario_table(key, sc)
    if doc.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in doc["notes"]] + [""]
    return "\n".join(lines)
