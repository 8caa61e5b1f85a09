"""The training report: the reward curve (PNG) and the before/after table (Markdown)."""

from __future__ import annotations

import json
import math
from pathlib import Path

CURVES = (
    ("reward", "total reward (weighted)"),
    ("rewards/correctness/mean", "correctness (accuracy)"),
    ("rewards/format/mean", "format"),
    ("rewards/calibration/mean", "calibration (-distance)"),
    ("rewards/brier/mean", "brier"),
    ("rewards/rlcr/mean", "rlcr (correct + 1 - brier)"),
    ("accuracy", "accuracy"),
    ("mean_confidence", "mean stated confidence"),
)


def read_log(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _smooth(values: list[float], window: int) -> list[float]:
    out = []
    for i in range(len(values)):
        chunk = [v for v in values[max(0, i - window + 1): i + 1] if not math.isnan(v)]
        out.append(sum(chunk) / len(chunk) if chunk else math.nan)
    return out


def level_series(rows: list[dict], prefix: str) -> dict[str, tuple[list[int], list[float]]]:
    """{level: (steps, values)} for the per-level log keys '<prefix>/<level>' (present on steps that drew the level)."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith(prefix + "/") and key.count("/") == 1:
                steps, values = series.setdefault(key.split("/", 1)[1], ([], []))
                steps.append(row["step"])
                values.append(float(value))
    return dict(sorted(series.items()))


def plot_curve(log_path: str | Path, png_path: str | Path, window: int = 10) -> Path:
    """Reward components per step; below them, when logged, the stated confidence per difficulty level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(log_path)
    levels = level_series(rows, "confidence")
    fig, axes = plt.subplots(2 if levels else 1, 1, figsize=(8, 8 if levels else 4.5), squeeze=False)
    ax = axes[0][0]
    for key, label in CURVES:
        points = [(r["step"], float(r[key])) for r in rows if key in r]
        if not points:
            continue
        steps, values = zip(*points)
        line, = ax.plot(steps, _smooth(list(values), window), label=label)
        ax.plot(steps, values, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("per-step mean (line: moving average of %d)" % window)
    ax.set_title("Calibration training: reward components")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if levels:
        ax = axes[1][0]
        # Each level turns up in a step or two of every eight, so the average runs over its own points.
        for level, (steps, values) in levels.items():
            style = "-" if level.endswith("-1d") else ":"
            ax.plot(steps, _smooth(values, max(2, window // 2)), style, label=level)
        ax.set_xlabel("GRPO step")
        ax.set_ylabel("stated confidence (moving average)")
        ax.set_title("Rollouts' stated confidence by level (solid: one-digit, the levels it can answer)")
        ax.set_ylim(-0.02, 1.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path


def _f(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def before_after_table(before: dict, after: dict) -> str:
    """Markdown table of accuracy and calibration for the sampled and the expected confidence."""
    lines = ["| metric | confidence | before | after | change |", "|---|---|---|---|---|"]
    lines.append(f"| accuracy | - | {_f(before['accuracy'])} | {_f(after['accuracy'])} | "
                 f"{(after['accuracy'] - before['accuracy']) * 100:+.1f} pts |")
    for kind in ("sampled", "expected"):
        for metric in ("ece", "auroc", "brier", "mean_confidence"):
            b, a = before[kind][metric], after[kind][metric]
            rel = "" if (b is None or math.isnan(b) or b == 0 or math.isnan(a)) else f"{(a - b) / abs(b) * 100:+.0f}%"
            lines.append(f"| {metric} | {kind} | {_f(b)} | {_f(a)} | {rel} |")
    return "\n".join(lines)


def difficulty_table(before: dict, after: dict) -> str:
    lines = ["| level | n | acc before | acc after | conf before (exp) | conf after (exp) |", "|---|---|---|---|---|---|"]
    for level, b in before["by_difficulty"].items():
        a = after["by_difficulty"].get(level, {})
        lines.append(f"| {level} | {b['n']} | {_f(b['accuracy'])} | {_f(a.get('accuracy'))} | "
                     f"{_f(b['mean_expected'])} | {_f(a.get('mean_expected'))} |")
    return "\n".join(lines)


def load_summary(path, limit: int | None = None) -> dict:
    """An eval file's summary; with `limit`, recomputed over its first `limit` samples.

    The held-out split is one seeded stream, so the first N questions of a longer evaluation
    are exactly the questions of an N-question one.
    """
    data = json.loads(Path(path).read_text())
    if limit is None:
        return data["summary"]
    from .evaluate import Sample, summarize

    samples = [Sample(**row) for row in data["samples"][:limit]]
    if len(samples) < limit:
        raise ValueError(f"{path} has {len(samples)} samples, fewer than --limit {limit}")
    return summarize(samples)


def write_report(log_path, before_path, after_path, out_dir, limit: int | None = None) -> str:
    """reward_curve.png + report.md in out_dir from a training log and two eval JSON files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_curve(log_path, out_dir / "reward_curve.png")
    before, after = load_summary(before_path, limit), load_summary(after_path, limit)
    text = before_after_table(before, after) + "\n\n" + difficulty_table(before, after) + "\n"
    (out_dir / "report.md").write_text(text)
    return text


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="training report from a log and before/after evaluations")
    parser.add_argument("--log", required=True, help="train_log.jsonl")
    parser.add_argument("--before", required=True, help="eval JSON of the starting model")
    parser.add_argument("--after", required=True, help="eval JSON of the trained model")
    parser.add_argument("--out", required=True, help="folder for reward_curve.png and report.md")
    parser.add_argument("--limit", type=int, default=None, help="compare the first N held-out questions of both")
    args = parser.parse_args()
    print(write_report(args.log, args.before, args.after, args.out, args.limit))
