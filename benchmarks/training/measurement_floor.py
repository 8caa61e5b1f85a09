"""What a perfectly calibrated confidence would measure on a split this small: the noise floor of ECE and AUROC.

Reads a recorded evaluation (`corea train --eval-only` eval.json; no model runs) and keeps its
confidences, but draws each question's correctness as Bernoulli(confidence), the world in which
the confidence is exactly the probability of being right. ECE there is pure sampling noise (its
population value is 0) and its AUROC what these confidences are expected to measure were they
exact (an expectation, not a bound: a run can measure above it). Prints, next to the
measured figures, the mean and 5-95% range over --draws worlds and how often a target is met,
so "ECE <= 0.05 at n=120" can be read as a bar the truth itself clears only so often.

    python benchmarks/training/measurement_floor.py benchmarks/training/run13_greedy_warm/test_run13_warm.json \
        [--source expected] [--ece 0.05 --auroc 0.85]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from corea_engine.evaluation.metrics import auroc, ece
from corea_engine.training.pick import read_eval


def floor(conf: np.ndarray, draws: int, seed: int) -> dict[str, np.ndarray]:
    """ECE and AUROC of `conf` (shape [n], probabilities) against `draws` Bernoulli(conf) outcomes."""
    rng = np.random.default_rng(seed)
    outcomes = rng.random((draws, conf.size)) < conf
    return {"ece": np.array([ece(conf, y) for y in outcomes]), "auroc": np.array([auroc(conf, y) for y in outcomes])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval", help="an eval.json written by `corea train --eval-only`")
    parser.add_argument("--source", choices=("expected", "sampled"), default="expected",
                        help="expected (the mean of the digit distribution, default) or sampled (the digit written)")
    parser.add_argument("--ece", type=float, default=0.05, help="ECE target (met: at or below)")
    parser.add_argument("--auroc", type=float, default=0.85, help="AUROC target (met: at or above)")
    parser.add_argument("--draws", type=int, default=2000, help="simulated outcome draws (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    args = parser.parse_args()
    try:
        recorded = read_eval(args.eval)
    except ValueError as err:
        parser.error(str(err))
    samples = [s for s in recorded["samples"]
               if s.get(args.source) is not None and s[args.source] == s[args.source]]  # None / NaN: none stated
    conf = np.clip(np.array([s[args.source] for s in samples], dtype=float), 0.0, 1.0)
    correct = np.array([float(s["correct"]) for s in samples])
    sim = floor(conf, args.draws, args.seed)
    report = {"n": int(conf.size), "source": args.source,
              "measured": {"ece": ece(conf, correct), "auroc": auroc(conf, correct)},
              "if_perfectly_calibrated": {
                  name: {"mean": float(v.mean()), "p5": float(np.percentile(v, 5)), "p95": float(np.percentile(v, 95)),
                         "p_target_met": float(np.mean(v <= args.ece if name == "ece" else v >= args.auroc))}
                  for name, v in sim.items()},
              "targets": {"ece": args.ece, "auroc": args.auroc}}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
