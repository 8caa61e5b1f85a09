"""A suite's markdown report and plots (deferral curves, reliability in vs out of domain, time to decision).

Reads the result dict of suite_metrics.analyse (and the rows, for the latency CDF), so a report
can be redrawn from a saved suite.json and rows.jsonl.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .report import _figure, _set_title

PLOTS = ("deferral_curve.png", "reliability.png", "decision_latency_cdf.png")


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _num(x, digits=3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _cost(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def _sections(result):
    for name, part in result["datasets"].items():
        yield name, part
    for role in ("in_domain", "out_of_domain"):
        if result["overall"][role] is not None:
            yield f"**all {role.replace('_', '-')}**", result["overall"][role]


def markdown(result: dict) -> str:
    suite, fit, cfg = result["suite"], result["fit"], result.get("config", {})
    lines = [f"# Suite `{suite['name']}` ({suite['kind']})", "", suite["description"], "",
             f"- in-domain (fit): {', '.join(suite['in_domain'])}; out-of-domain (test): {', '.join(suite['out_of_domain'])}",
             f"- confidence source: {result['confidence_source']}; policy fitted on {fit['n']} in-domain questions "
             f"({fit['how']}): threshold {fit['policy']['threshold']:g}, tie-defer probability "
             f"{fit['policy']['tie_defer_prob']:.3f}, intended deferral {_pct(fit['intended_deferral'])}",
             "- in-domain figures are on " + ("the held-out share, not used to fit" if result["in_domain_evaluated_on"] == "held_out"
                                               else "the rows used to fit (in-sample)")]
    for key in ("slm", "llm", "questions_per_dataset", "seed", "command"):
        if cfg.get(key) is not None:
            lines.append(f"- {key.replace('_', ' ')}: `{cfg[key]}`")
    if result["datasets_without_rows"]:
        lines.append(f"- datasets without rows (the run stopped before them): {', '.join(result['datasets_without_rows'])}")
    if result["dropped_rows"]:
        lines.append(f"- rows without both tiers' answers (left out): {result['dropped_rows']}")
    lines += ["", "## Quality and cost (policy fitted in-domain)", "",
              "| dataset | role | n | SLM | LLM | cascade | deferred | cost saved vs LLM | APGR (random 0.5) | CPT(50%) | CPT(80%) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, p in _sections(result):
        r = p["routing"]
        lines.append(f"| {name} | {p['role']} | {p['n']} | {_pct(p['accuracy']['slm'])} | {_pct(p['accuracy']['llm'])} | "
                     f"{_pct(p['accuracy']['cascade'])} | {_pct(p['deferral_rate'])} | {_pct(p['cost']['saved_fraction'])} | "
                     f"{_num(r['apgr'])} | {_pct(r['cpt_50'])} | {_pct(r['cpt_80'])} |")
    lines += ["", "CPT(p): the share deferred at which the cascade recovers p of the SLM-LLM accuracy gap (random "
              "deferral: p). '-' where the LLM is not more accurate than the SLM (no gap to recover); over a gap of "
              "a point or two, APGR and CPT swing widely (they divide by the gap; above 1: the cascade beats the LLM).", "",
              "## Calibration (ECE 10 bins / AUROC / Brier)", "",
              "| dataset | sampled | expected | calibrated (isotonic, fitted in-domain) |", "|---|---|---|---|"]
    for name, p in _sections(result):
        cells = []
        for source in ("sampled", "expected", "calibrated"):
            s = p["calibration"][source]
            cells.append("-" if s is None else f"{_num(s['ece'])} / {_num(s['auroc'])} / {_num(s['brier'])}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Shift: fitted in-domain, applied out-of-domain", "",
              "| test set | intended deferral | realised | accuracy drop in-domain -> here (points) | ECE raw in -> here | ECE calibrated in -> here |",
              "|---|---|---|---|---|---|"]
    for name, s in result["shift"].items():
        lines.append(f"| {name} | {_pct(s['intended_deferral'])} | {_pct(s['realised_deferral'])} | "
                     f"{_num(100 * s['in_domain_accuracy_drop'], 1)} -> {_num(100 * s['accuracy_drop'], 1)} | "
                     f"{_num(s['in_domain_ece_raw'])} -> {_num(s['ece_raw'])} | "
                     f"{_num(s['in_domain_ece_calibrated'])} -> {_num(s['ece_calibrated'])} |")
    lines += ["", "## Time to decision (request to accept/defer)", "",
              "| dataset | order | n | p50 ms | p90 ms | p99 ms | confidence known, p50 ms | SLM tokens per decision | deferred |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, p in _sections(result):
        for order, d in p["decision"].items():
            if d is not None:
                lines.append(f"| {name} | {order.replace('_', '-')} | {d['n']} | {_num(d['p50_ms'], 0)} | "
                             f"{_num(d['p90_ms'], 0)} | {_num(d['p99_ms'], 0)} | {_num(d['confidence_p50_ms'], 0)} | "
                             f"{_num(d['slm_tokens_mean'], 1)} | {_pct(d['deferred_share'])} |")
    threshold = (cfg.get("cascade_config") or {}).get("threshold")
    if threshold is not None:
        lines += ["", f"Timed at the served threshold {threshold:g} (the cascade configuration's), "
                  f"{cfg.get('concurrency')} questions in flight. A deferral is decided at the confidence; "
                  "an acceptance when the SLM has finished (its answer must parse)."]
    lines += ["", "Plots: " + ", ".join(f"[{p}]({p})" for p in PLOTS), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# plots


def _save(plt, fig, ax, path, title):
    _set_title(ax, title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_deferral_curves(result: dict, path: Path) -> None:
    plt, (fig, ax) = _figure()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, p) in enumerate(result["datasets"].items()):
        color = colors[i % len(colors)]
        c = p["curve"]
        ax.plot(c["deferral"], c["accuracy"], "o-", ms=3, color=color,
                label=f"{name} ({p['role'].replace('_', '-')}), APGR {_num(p['routing']['apgr'], 2)}")
        ax.plot([0, 1], [c["accuracy"][0], c["accuracy"][-1]], "--", lw=1, color=color)
        ax.scatter([p["deferral_rate"]], [p["accuracy"]["cascade"]], marker="*", s=120, color=color, zorder=3)
    ax.plot([], [], "k--", lw=1, label="random deferral (same end points)")
    ax.scatter([], [], marker="*", color="black", label="the policy fitted in-domain")
    ax.set(xlim=(-0.02, 1.02), xlabel="share of questions deferred to the LLM", ylabel="accuracy")
    ax.legend(fontsize=7, loc="best")
    _save(plt, fig, ax, path, f"{result['suite']['name']}: deferral curves")


def plot_reliability(result: dict, path: Path) -> None:
    plt, (fig, ax) = _figure()
    for role, style in (("in_domain", "-"), ("out_of_domain", "--")):
        part = result["overall"][role]
        for kind, marker in ((result["confidence_source"], "o"), ("calibrated", "s")):
            summary = None if part is None else part["calibration"][kind]
            if summary is None:
                continue
            bins = [b for b in summary["reliability"] if b["count"]]
            ax.plot([b["mean_confidence"] for b in bins], [b["accuracy"] for b in bins], style, marker=marker, ms=4,
                    label=f"{role.replace('_', '-')} (n={part['n']}), {kind}: ECE {_num(summary['ece'])}")
    ax.plot([0, 1], [0, 1], color="grey", lw=1, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="confidence (bin mean)", ylabel="accuracy in bin")
    ax.legend(fontsize=7, loc="upper left")
    _save(plt, fig, ax, path, f"{result['suite']['name']}: reliability in- vs out-of-domain "
          f"(threshold and calibrator fitted in-domain)")


def plot_decision_cdf(rows: dict, path: Path, title: str) -> None:
    """Empirical CDFs of the time to decision (solid) and to the stated confidence (dashed) per order."""
    from matplotlib.ticker import NullFormatter

    from .suite_metrics import ORDERS

    plt, (fig, ax) = _figure()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = False
    for i, order in enumerate(ORDERS):
        timed = [r["decision"][order] for rs in rows.values() for r in rs if r["decision"].get(order)]
        for key, style, what in (("ms", "-", "decision"), ("confidence_ms", "--", "confidence known")):
            ms = np.sort([d[key] for d in timed if d.get(key) is not None])
            if ms.size:
                ax.step(ms, np.arange(1, ms.size + 1) / ms.size, style, where="post", color=colors[i],
                        label=f"{order.replace('_', '-')}: {what} (n={ms.size})")
                drawn = True
    if drawn:
        ax.set(xscale="log", xlabel="time from request (ms)", ylabel="share of requests", ylim=(0, 1.02))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=7, loc="upper left")
    else:
        ax.text(0.5, 0.5, "no timings: recorded outputs carry none", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    _save(plt, fig, ax, path, title)


def write_plots(out_dir: Path, result: dict, rows: dict) -> None:
    plot_deferral_curves(result, out_dir / "deferral_curve.png")
    plot_reliability(result, out_dir / "reliability.png")
    plot_decision_cdf(rows, out_dir / "decision_latency_cdf.png", f"{result['suite']['name']}: time to decision")
