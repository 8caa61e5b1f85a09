"""Three tiers against two on the recorded 7B outputs: accuracy-cost frontiers and held-out calibration.

    python benchmarks/ntier_frontier.py --out benchmarks/results/ntier_frontier   (about a minute of CPU)

The recorded models (Qwen2.5-7B variants: Base, RLVR, Answer-Prob, RLCR; RLVR-Classifier states no
confidence and only appears as a last tier) are ONE model size: they differ in accuracy and in how
their confidence is stated, not in cost. Prices are set per tier position (1, 3, 10 per completion
token: small, middle, large), so a configuration is an assignment of models to positions. That
exercises the N-tier machinery on real confidences; it is not evidence about a 1B/8B/frontier ladder.

For every ordered choice of models (3 tiers: small, middle, large; 2 tiers: small, large) the
frontier is computed over every threshold tuple (evaluation/ntier.py); a configuration's score is its
mean accuracy over cost budgets 0.10, 0.15, ..., 1.00 of the large tier alone (the best accuracy
within each budget; the small tier alone where nothing fits). For the best 3-tier and the best
2-tier configuration, the joint thresholds are fitted on random halves (20 splits) for cost budgets
0.3 and 0.5 and for a target accuracy, and checked on the other halves.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from corea_engine.evaluation.ntier import FitError, best_within, fit, frontier, tier_columns

DATASETS = ("math-500", "commonsenseqa")
WITH_CONFIDENCE = ("RLVR", "Answer-Prob", "RLCR", "Base")
ANY = WITH_CONFIDENCE + ("RLVR-Classifier",)
BUDGETS = np.round(np.arange(0.10, 1.0001, 0.05), 2)
SPLITS = 20


def score(points, cols) -> tuple[float, list[float]]:
    floor = float(cols.correct[:, 0].mean())  # the small tier alone: the cheapest configuration
    accuracy = [(p.accuracy if (p := best_within(points, b)) else floor) for b in BUDGETS]
    return float(np.mean(accuracy)), accuracy


def configurations(dataset: str, n_tiers: int):
    prices = [1.0, 3.0, 10.0] if n_tiers == 3 else [1.0, 10.0]
    for models in itertools.permutations(ANY, n_tiers):
        if all(m in WITH_CONFIDENCE for m in models[:-1]):
            yield models, tier_columns([f"rlcr:{dataset}:{m}" for m in models], prices)


def held_out(cols, **target) -> dict:
    rows = []
    for seed in range(SPLITS):
        order = np.random.default_rng(seed).permutation(len(cols))
        half = len(cols) // 2
        calib, held = cols.subset(np.sort(order[half:])), cols.subset(np.sort(order[:half]))
        try:
            f = fit(calib, holdout=held, seed=seed, bootstrap=0, **target)
        except FitError:
            continue
        rows.append((f.calibration["accuracy"], f.holdout["accuracy"], f.calibration["cost_fraction"],
                     f.holdout["cost_fraction"], f.holdout["target_met"]))
    a = np.array(rows, dtype=float)
    return {"splits": len(rows), "calibration_accuracy": a[:, 0].mean(), "holdout_accuracy": a[:, 1].mean(),
            "holdout_accuracy_sd": a[:, 1].std(ddof=1), "calibration_cost_fraction": a[:, 2].mean(),
            "holdout_cost_fraction": a[:, 3].mean(), "holdout_cost_fraction_sd": a[:, 3].std(ddof=1),
            "target_met_on_holdout": a[:, 4].mean()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/ntier_frontier")
    args = parser.parse_args()
    results, lines = {}, ["# Three tiers against two on the recorded 7B outputs", "",
                          "Written by `python benchmarks/ntier_frontier.py`; see its docstring for the method. "
                          "**One model size**: the Qwen2.5-7B variants differ in accuracy and confidence, the prices "
                          "(1, 3, 10 per completion token by tier position) make them a cascade. Offline: every tier "
                          "a question reaches is paid in full (recorded answer-first outputs).", "",
                          "Reading: the frontiers and the choice of the best configuration are in-sample (the whole "
                          "set, 3-tier search over 3x more configurations than 2-tier, which favours it); a difference "
                          "of 0.004 is 2 questions of 500, 5 of 1221. The held-out tables are the out-of-sample view: "
                          "thresholds chosen on one half, figures on the other.", ""]
    for dataset in DATASETS:
        ranked = {}
        for n in (2, 3):
            scored = []
            for models, cols in configurations(dataset, n):
                points = frontier(cols)
                mean, curve = score(points, cols)
                scored.append((mean, models, cols, points, curve))
            scored.sort(key=lambda s: -s[0])
            ranked[n] = scored
        best3, best2 = ranked[3][0], ranked[2][0]
        out = {"best_3": {"models": best3[1], "score": best3[0], "curve": best3[4],
                          "frontier": [p.as_dict() for p in best3[3]]},
               "best_2": {"models": best2[1], "score": best2[0], "curve": best2[4],
                          "frontier": [p.as_dict() for p in best2[3]]},
               "ranking_3": [(s[1], s[0]) for s in ranked[3][:5]], "ranking_2": [(s[1], s[0]) for s in ranked[2][:5]],
               "budgets": BUDGETS.tolist()}
        large = float(best3[2].correct[:, -1].mean())
        target = round(large - 0.01, 3)
        out["calibration"] = {}
        for name, (_, _, cols, _, _) in (("3 tiers", best3), ("2 tiers", best2)):
            out["calibration"][name] = {
                "cost_budget 0.3": held_out(cols, cost_budget=0.3), "cost_budget 0.5": held_out(cols, cost_budget=0.5),
                f"target_accuracy {target:g}": held_out(cols, target_accuracy=target)}
        results[dataset] = out

        lines += [f"## {dataset} ({len(best3[2])} questions)", "",
                  f"Best 3-tier: {' -> '.join(best3[1])} (mean accuracy over budgets {best3[0]:.4f}); "
                  f"best 2-tier: {' -> '.join(best2[1])} ({best2[0]:.4f}). Single models: " + ", ".join(
                      f"{m} {tier_columns([f'rlcr:{dataset}:{m}'] * 2, [1, 1]).correct[:, 0].mean():.3f}" for m in ANY), "",
                  "| cost budget (x large alone) | " + " | ".join(f"{b:.2f}" for b in BUDGETS[::2]) + " |",
                  "|---|" + "---|" * len(BUDGETS[::2])]
        for label, best in (("best 3-tier accuracy", best3), ("best 2-tier accuracy", best2)):
            lines.append(f"| {label} | " + " | ".join(f"{a:.3f}" for a in best[4][::2]) + " |")
        top3 = max(best3[3], key=lambda p: p.accuracy)
        top2 = max(best2[3], key=lambda p: p.accuracy)
        lines += ["", f"Most accurate point: 3 tiers {top3.accuracy:.3f} at {top3.cost_fraction:.3f} of the large tier's "
                      f"cost (thresholds {', '.join(f'{t:.4g}' for t in top3.thresholds)}; answered by each tier "
                      f"{', '.join(f'{s:.2f}' for s in top3.share)}); 2 tiers {top2.accuracy:.3f} at {top2.cost_fraction:.3f}.",
                  "", "Joint thresholds fitted on one half, checked on the other (20 random halves; means, sd):", "",
                  "| cascade | target | calib. accuracy | held-out accuracy | calib. cost | held-out cost | target held on held-out |",
                  "|---|---|---|---|---|---|---|"]
        for name, targets in out["calibration"].items():
            for t, h in targets.items():
                lines.append(f"| {name} | {t} | {h['calibration_accuracy']:.3f} | {h['holdout_accuracy']:.3f} "
                             f"± {h['holdout_accuracy_sd']:.3f} | {h['calibration_cost_fraction']:.3f} | "
                             f"{h['holdout_cost_fraction']:.3f} ± {h['holdout_cost_fraction_sd']:.3f} | "
                             f"{h['target_met_on_holdout']:.0%} of {h['splits']} |")
        lines.append("")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
