"""Benchmark reports: JSON (the source of truth), a markdown table, a plot.

A report is {"target", "client", "config", "machine", "levels": [summary per concurrency]}; a
run over several targets (or both clients) writes a list of them.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

COLUMNS = (
    ("concurrency", "conc", "{:d}"),
    ("ok", "ok", "{:d}"),
    ("errors", "err", "{:d}"),
    ("requests_per_s", "req/s", "{:.2f}"),
    ("slm_tokens_per_s", "SLM tok/s", "{:.1f}"),
    ("llm_tokens_per_s", "LLM tok/s", "{:.1f}"),
    ("latency_p50_ms", "p50 ms", "{:.0f}"),
    ("latency_p90_ms", "p90 ms", "{:.0f}"),
    ("latency_p99_ms", "p99 ms", "{:.0f}"),
    ("ttd_p50_ms", "TTD p50 ms", "{:.0f}"),
    ("ttd_p90_ms", "TTD p90 ms", "{:.0f}"),
    ("ttd_p99_ms", "TTD p99 ms", "{:.0f}"),
    ("deferral_rate", "deferred", "{:.0%}"),
)


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "torch_threads": int(os.environ.get("COREA_THREADS", "0")) or None,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def markdown(report: dict) -> str:
    title = f"### {report['target']} ({report.get('client', 'python')} client)"
    config = report.get("config") or {}
    lines = [title, ""]
    if config:
        lines += [", ".join(f"{k}={v}" for k, v in config.items() if v is not None), ""]
    lines.append("| " + " | ".join(header for _, header, _ in COLUMNS) + " |")
    lines.append("|" + "---:|" * len(COLUMNS))
    for level in report["levels"]:
        cells = [("-" if level.get(key) is None else fmt.format(level[key])) for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(reports: list[dict], out_dir: str | Path, stem: str = "bench") -> dict[str, Path]:
    """Write <stem>.json, <stem>.md and <stem>.png under out_dir; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md", "png": out / f"{stem}.png"}
    paths["json"].write_text(json.dumps(reports, indent=1) + "\n")
    paths["md"].write_text("\n".join(markdown(r) for r in reports))
    plot(reports, paths["png"])
    return paths


def plot(reports: list[dict], path: str | Path) -> None:
    """Throughput and p99 latency against concurrency, one line per target and client."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for report in reports:
        levels = [lv for lv in report["levels"] if lv.get("requests_per_s") is not None]
        label = f"{report['target']} ({report.get('client', 'python')})"
        x = [lv["concurrency"] for lv in levels]
        left.plot(x, [lv["requests_per_s"] for lv in levels], marker="o", label=label)
        right.plot(x, [lv["latency_p99_ms"] or float("nan") for lv in levels], marker="o", label=label)
    levels = sorted({lv["concurrency"] for r in reports for lv in r["levels"]})
    for axis, ylabel in ((left, "requests/s"), (right, "p99 latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(levels, [str(level) for level in levels])
        axis.set_xlabel("concurrency")
        axis.set_ylabel(ylabel)
        axis.grid(True, alpha=0.3)
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
