"""What `corea eval` writes: metrics JSON, a short markdown report and three plots.

Files in the output folder:
  metrics.json          every figure (NaN written as null)
  report.md             the headline table and the threshold sweep
  reliability.png       reliability diagram (ECE bins)
  confidence_hist.png   histogram of the SLM's confidence, correct vs wrong answers
  accuracy_vs_cost.png  the cascade's accuracy against its cost at every threshold (both tiers
                        known on every sample only)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from . import metrics
from .records import Columns

PLOTS = ("reliability.png", "confidence_hist.png", "accuracy_vs_cost.png")


def _clean(value):
    """JSON-safe: NaN and infinities become null, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def build_metrics(cols: Columns, threshold: float | None = None, n_bins: int = 10) -> dict:
    """SLM accuracy and calibration; with the LLM known on every sample, the cascade at the
    threshold, both tiers alone, and the sweep over thresholds."""
    out = {"slm": metrics.calibration_summary(cols.slm_confidence, cols.slm_correct, n_bins),
           "reliability": [vars(b) for b in metrics.reliability_bins(cols.slm_confidence, cols.slm_correct, n_bins)]}
    out["slm"]["mean_cost"] = float(np.mean(cols.slm_cost)) if len(cols) else math.nan
    if cols.has_llm:
        out["llm"] = {"pass@1": metrics.pass_at_1(cols.llm_correct), "mean_cost": float(np.mean(cols.llm_cost))}
        sweep = metrics.threshold_sweep(cols.slm_correct, cols.slm_confidence, cols.slm_cost, cols.llm_correct, cols.llm_cost)
        out["sweep"] = [o.as_dict() for o in sweep]
        if threshold is not None:
            out["cascade"] = metrics.simulate_cascade(cols.slm_correct, cols.slm_confidence, cols.slm_cost,
                                                      cols.llm_correct, cols.llm_cost, threshold).as_dict()
    return out


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _num(x, digits=3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


_RATES = {"accuracy", "deferral_rate", "degraded_rate", "cost reduction"}


def _cost(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def markdown(result: dict, title: str) -> str:
    slm = result["slm"]
    lines = [f"# {title}", ""]
    for key, value in result.get("run", {}).items():
        lines.append(f"- {key}: {value}")
    lines += ["", "| | value |", "|---|---|",
              f"| samples | {slm['n']} |",
              f"| SLM pass@1 | {_pct(slm['pass@1'])} |",
              f"| SLM format adherence | {_pct(slm['format_adherence'])} |",
              f"| SLM mean confidence | {_num(slm['mean_confidence'])} |",
              f"| ECE (10 bins) | {_num(slm['ece'])} |",
              f"| AUROC | {_num(slm['auroc'])} |",
              f"| Brier | {_num(slm['brier'])} |"]
    if "llm" in result:
        lines.append(f"| LLM pass@1 | {_pct(result['llm']['pass@1'])} |")
    if "cascade" in result:
        c = result["cascade"]
        lines += [f"| cascade threshold | {c['threshold']:g} |",
                  f"| cascade accuracy | {_pct(c['accuracy'])} |",
                  f"| deferral rate (LLM%) | {_pct(c['deferral_rate'])} |",
                  f"| cost per question | {_cost(c['cost'])} (LLM alone {_cost(c['llm_only_cost'])}) |",
                  f"| cost reduction vs LLM alone | {_pct(c['cost_reduction'])} |",
                  f"| accuracy drop vs LLM alone | {_num(100 * c['accuracy_drop'], 1)} points |"]
    if "online" in result:
        for key, value in result["online"].items():
            shown = value if isinstance(value, str) else _pct(value) if key in _RATES else _cost(value)
            lines.append(f"| measured {key} | {shown} |")
    if "sweep" in result:
        lines += ["", "## Threshold sweep (plain policy: accept when confidence >= threshold)", "",
                  "| threshold | LLM% | accuracy | cost reduction | accuracy drop (points) |", "|---|---|---|---|---|"]
        for o in result["sweep"]:
            shown = f"{o['threshold']:g}" if o is not result["sweep"][-1] else "above all (defer all)"
            lines.append(f"| {shown} | {_pct(o['deferral_rate'])} | {_pct(o['accuracy'])} | "
                         f"{_pct(o['cost_reduction'])} | {_num(100 * o['accuracy_drop'], 1)} |")
    lines += ["", "Plots: " + ", ".join(f"[{p}]({p})" for p in result.get("plots", [])), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# plots


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.subplots(figsize=(5.5, 4.5), dpi=100)


def _set_title(ax, title: str, extra: str = "") -> None:
    import textwrap

    text = "\n".join(textwrap.wrap(title, 60)) + (f"\n{extra}" if extra else "")
    ax.set_title(text, fontsize=9)


def plot_reliability(cols: Columns, path: Path, title: str, n_bins: int = 10) -> None:
    plt, (fig, ax) = _figure()
    bins = metrics.reliability_bins(cols.slm_confidence, cols.slm_correct, n_bins)
    centres = [(b.lower + b.upper) / 2 for b in bins]
    accuracy = [0.0 if b.count == 0 else b.accuracy for b in bins]
    ax.bar(centres, accuracy, width=1 / n_bins, edgecolor="black", alpha=0.7, label="accuracy in bin")
    for b, c in zip(bins, centres):
        if b.count:
            ax.plot([b.lower, b.upper], [b.mean_confidence] * 2, color="tab:red", lw=2)
            ax.annotate(str(b.count), (c, (b.accuracy or 0) + 0.02), ha="center", fontsize=7)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.plot([], [], color="tab:red", lw=2, label="mean confidence in bin")
    ece = metrics.ece(cols.slm_confidence, cols.slm_correct, n_bins)
    ax.set(xlim=(0, 1), ylim=(0, 1.08), xlabel="stated confidence", ylabel="accuracy")
    _set_title(ax, title, f"ECE {_num(ece)}, samples per bin annotated")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_confidence_hist(cols: Columns, path: Path, title: str) -> None:
    plt, (fig, ax) = _figure()
    stated = ~np.isnan(cols.slm_confidence)
    conf, corr = cols.slm_confidence[stated], cols.slm_correct[stated]
    edges = np.linspace(0, 1, 21)
    ax.hist([conf[corr == 1], conf[corr == 0]], bins=edges, stacked=True, label=["correct", "wrong"],
            color=["tab:green", "tab:red"], edgecolor="black")
    missing = int((~stated).sum())
    ax.set(xlabel="stated confidence", ylabel="samples")
    _set_title(ax, title, f"{missing} without a confidence" if missing else "")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_accuracy_vs_cost(result: dict, path: Path, title: str) -> None:
    plt, (fig, ax) = _figure()
    if "sweep" in result:
        sweep = result["sweep"]
        llm_only = sweep[0]["llm_only_cost"] or 1.0
        x = [o["cost"] / llm_only for o in sweep]
        y = [o["accuracy"] for o in sweep]
        ax.plot(x, y, "o-", ms=3, label="cascade, one point per threshold")
        ax.scatter([1.0], [result["llm"]["pass@1"]], marker="s", color="black", zorder=3, label="LLM alone")
        ax.scatter([result["slm"]["mean_cost"] / llm_only], [result["slm"]["pass@1"]], marker="^", color="tab:orange",
                   zorder=3, label="SLM alone")
        if "cascade" in result:
            c = result["cascade"]
            ax.scatter([c["cost"] / llm_only], [c["accuracy"]], marker="*", s=150, color="tab:red", zorder=4,
                       label=f"threshold {c['threshold']:g}")
        ax.set(xlabel="cost relative to the LLM alone", ylabel="accuracy")
        ax.legend(fontsize=8, loc="lower right")
    else:
        ax.text(0.5, 0.5, "the LLM's answers are not known on every sample:\nno threshold sweep",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    _set_title(ax, title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_outputs(out_dir: Path, cols: Columns, result: dict, title: str) -> dict:
    """metrics.json, report.md and the plots into out_dir; returns the result with the plot names."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_reliability(cols, out_dir / "reliability.png", title)
    plot_confidence_hist(cols, out_dir / "confidence_hist.png", title)
    plot_accuracy_vs_cost(result, out_dir / "accuracy_vs_cost.png", title)
    result = dict(result, plots=list(PLOTS))
    (out_dir / "metrics.json").write_text(json.dumps(_clean(result), indent=2) + "\n")
    (out_dir / "report.md").write_text(markdown(result, title))
    return result
