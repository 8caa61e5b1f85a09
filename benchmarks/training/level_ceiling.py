"""What a confidence that knows only each question's level can reach: the "confidence = level" ceiling.

Reads recorded evaluations (`corea train --eval-only` eval.json files; no model runs). Each
question of TARGET is given its level's accuracy in FIT (e.g. the starting model on
validation), and scored on TARGET's correctness: ECE, AUROC, Brier, std. With --oracle the
level accuracies come from TARGET itself, the best any level-only confidence can do there
(in-sample, so AUROC is the ceiling and ECE is 0 by construction with enough bins).

    python benchmarks/training/level_ceiling.py (--fit VAL/eval.json | --oracle) --target TEST/eval.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np

from corea_engine.evaluation.metrics import auroc, brier, ece
from corea_engine.training.pick import read_eval


def level_accuracy(samples: list[dict]) -> dict[str, float]:
    groups: dict[str, list[float]] = defaultdict(list)
    for s in samples:
        groups[s["difficulty"]].append(float(s["correct"]))
    return {level: float(np.mean(v)) for level, v in groups.items()}


def level_scores(fit: list[dict], target: list[dict]) -> dict:
    """Scores of confidence = FIT's per-level accuracy on TARGET's questions."""
    table = level_accuracy(fit)
    overall = float(np.mean([s["correct"] for s in fit]))
    conf = np.array([table.get(s["difficulty"], overall) for s in target])
    corr = np.array([float(s["correct"]) for s in target])
    return {"n": len(target), "accuracy": float(corr.mean()), "ece": ece(conf, corr), "auroc": auroc(conf, corr),
            "brier": brier(conf, corr), "std": float(np.std(conf)),
            "levels": {k: round(v, 3) for k, v in sorted(table.items())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", help="eval.json whose per-level accuracy is the confidence (not with --oracle)")
    parser.add_argument("--target", required=True, help="eval.json to score that confidence on")
    parser.add_argument("--oracle", action="store_true", help="take the level accuracies from --target itself")
    args = parser.parse_args()
    if bool(args.fit) == args.oracle:
        parser.error("give --fit, or --oracle to take the levels' accuracy from --target")
    try:
        target = read_eval(args.target)["samples"]
        fit = target if args.oracle else read_eval(args.fit)["samples"]
    except ValueError as err:
        parser.error(str(err))
    print(json.dumps(level_scores(fit, target), indent=1))


if __name__ == "__main__":
    main()
