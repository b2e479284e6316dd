"""PNG bar charts of a results JSON: ``python -m bench.plot RESULTS.json OUTDIR``.

Runs in bench/.work/venv, which has matplotlib; the runner calls it.
"""

import json
import sys
from pathlib import Path
from typing import Any


def plot_scenario(key: str, sc: dict[str, Any], machine: str, out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    servers: dict[str, Any] = sc["servers"]
    if not servers or not any(r["values"] for r in servers.values()):
        return None
    higher = sc["higher_is_better"]
    items = sorted(
        servers.items(),
        # Bottom to top: failed servers, then the worst to the best.
        key=lambda kv: (
            kv[1]["status"] == "ok",
            (kv[1]["median"] or 0) if higher else -(kv[1]["median"] or 0),
        ),
    )
    names, medians, lows, highs, colors, labels = [], [], [], [], [], []
    for name, res in items:
        ok = res["status"] == "ok"
        med = res["median"] or 0.0
        names.append(name)
        medians.append(med if ok else 0.0)
        lows.append(max(0.0, med - (res["min"] or med)) if ok else 0.0)
        highs.append(max(0.0, (res["max"] or med) - med) if ok else 0.0)
        if not ok:
            colors.append("#bbbbbb")
            labels.append(res["status"])
        else:
            colors.append("#d1495b" if name == "cdaphne" else
                          "#555555" if name == "ceiling" else "#2e86ab")  # fmt: skip
            labels.append(f"{med:,.0f}" if med >= 100 else f"{med:,.1f}")
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(names) + 1.6), dpi=110)
    y = range(len(names))
    ax.barh(y, medians, xerr=[lows, highs], color=colors, capsize=3)
    ax.set_yticks(list(y), names)
    ends = [m + h for m, h in zip(medians, highs, strict=True)]
    top = max(ends) if max(ends) > 0 else 1.0
    positive = [m for m in medians if m > 0]
    log = bool(positive) and top / min(positive) > 50  # one slow server would hide the rest
    for i, (end, label) in enumerate(zip(ends, labels, strict=True)):
        x = end * 1.08 if log and end > 0 else end + top * 0.015
        if log and end <= 0:
            x = min(positive) / 2
        ax.text(x, i, label, va="center", fontsize=9)
    if log:
        ax.set_xscale("log")
        ax.set_xlim(min(positive) / 3, top * 4)
    else:
        ax.set_xlim(0, top * 1.2)
    ax.xaxis.set_major_formatter(
        matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:.1f}")
    )
    better = "higher is better" if higher else "lower is better"
    what = sc.get("params", {}).get("value", "median")
    scale = ", log scale" if log else ""
    ax.set_xlabel(f"{what} ({sc['unit']}; bars: min–max; {better}{scale})")
    ax.set_title(f"{sc['title']}\n{machine}", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = out / f"{key}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str]) -> int:
    doc = json.loads(Path(argv[0]).read_text())
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    m = doc["machine"]
    cores = f"{m['nproc']} cores, {m['cpu_model']}"
    for key, sc in doc["scenarios"].items():
        pinned = "pinning" not in sc.get("params", {})  # the --workers scenarios: unpinned
        where = "server on core 0, client on core 1" if pinned else "nothing pinned"
        path = plot_scenario(key, sc, f"{cores}; {where}", out)
        if path is not None:
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
