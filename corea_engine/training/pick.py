"""Choose a training checkpoint on the validation split, by a rule fixed before looking at test.

Two rules (RULES), both among checkpoints whose validation accuracy is at most
`max_accuracy_drop` below the starting model's; a checkpoint that states no confidence on some
question ranks last. The pick is then evaluated once on the test split.

* ``sampled-ece`` (runs 1-7): the lowest ECE of the sampled confidence (the digit the runtime
  writes), then of the expected confidence.
* ``served`` (run 8 on): judges the confidence the cascade serves, an isotonic map of the expected
  confidence fitted on validation. Validation is cut into two fixed halves; the map is fitted on
  one and scored on the other, then the other way round, and the two scores averaged. The
  highest Brier skill score (1 - Brier / (acc (1 - acc)), the share of the outcome's variance
  the served confidence explains) wins, then the higher AUROC. Brier, not ECE: a map that
  serves every question the base rate has ECE ~0 and skill 0, so ECE alone rewards exactly
  the flat confidence a cascade cannot threshold. The table's "serve" column says whether the
  picked model should be served with that map or without: the raw expected confidence is
  scored on the same held-out halves, and the map is worth serving only where it explains more
  (a map fitted on 100 questions is a step function that can be coarser than the error it
  corrects; run 13's raw confidence beat it). It does not change the pick.

    python -m corea_engine.training.pick [--rule served] --base VAL_BASE/eval.json VAL_CKPT1/eval.json ...
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..evaluation.calibrators import Calibrator
from ..evaluation.metrics import auroc, brier, ece
from .report import _f

RULES = ("sampled-ece", "served")


def _key(summary: dict) -> tuple[float, float]:
    sampled, expected = summary["sampled"]["ece"], summary["expected"]["ece"]
    complete = summary["sampled"].get("format_adherence", 1.0) == 1.0
    worst = math.inf
    return (sampled if complete and not math.isnan(sampled) else worst,
            expected if complete and not math.isnan(expected) else worst)


def pick_checkpoint(base: dict, candidates: dict[str, dict], max_accuracy_drop: float = 0.02) -> str | None:
    """Name of the chosen candidate, or None when every one loses more accuracy than allowed."""
    eligible = {name: s for name, s in candidates.items() if s["accuracy"] >= base["accuracy"] - max_accuracy_drop - 1e-9}
    if not eligible:
        return None
    return min(eligible, key=lambda name: _key(eligible[name]))


def served_scores(samples: list[dict], source: str = "expected", seed: int = 0) -> dict:
    """Two-fold cross-fitted isotonic map of `source` confidence over eval.json `samples`.

    Returns ECE, AUROC, Brier, Brier skill score and std (spread) of the served confidence,
    and raw_skill, the Brier skill of the unmapped confidence on the same halves, each the mean
    over the two held-out halves; NaN throughout when a confidence is missing.
    The halves are a seeded permutation of the samples sorted by id, so every checkpoint
    evaluated on the same questions is scored on the same halves.
    """
    ordered = sorted(samples, key=lambda s: s["id"])
    conf = np.array([np.nan if s[source] is None else s[source] for s in ordered], dtype=float)
    corr = np.array([float(s["correct"]) for s in ordered])
    if np.isnan(conf).any() or len(ordered) < 4:
        return {k: math.nan for k in ("ece", "auroc", "brier", "skill", "std", "raw_skill")}
    perm = np.random.default_rng(seed).permutation(len(ordered))
    halves = (perm[: len(perm) // 2], perm[len(perm) // 2:])
    scores = []
    for fit, held in (halves, halves[::-1]):
        served = Calibrator.fit(conf[fit], corr[fit], kind="isotonic", source=source).apply(conf[held])
        y = corr[held]
        base_rate = y.mean()
        uncertainty = base_rate * (1 - base_rate)
        b, raw = brier(served, y), brier(conf[held], y)
        scores.append({"ece": ece(served, y), "auroc": auroc(served, y), "brier": b,
                       "skill": 1 - b / uncertainty if uncertainty > 0 else math.nan, "std": float(np.std(served)),
                       "raw_skill": 1 - raw / uncertainty if uncertainty > 0 else math.nan})
    return {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}


def _served_key(scores: dict) -> tuple[float, float]:
    skill, rank = scores["skill"], scores["auroc"]
    return (-skill if not math.isnan(skill) else math.inf, -rank if not math.isnan(rank) else math.inf)


def serve_choice(scores: dict) -> str:
    """'isotonic' when the map's cross-fitted Brier skill beats the raw confidence's, else 'raw'."""
    return "isotonic" if scores["skill"] > scores["raw_skill"] else "raw"


def pick_served(base: dict, candidates: dict[str, dict], max_accuracy_drop: float = 0.02) -> str | None:
    """The `served` rule over {name: eval.json content} (summary and samples); None when none is eligible."""
    eligible = {name: e for name, e in candidates.items()
                if e["summary"]["accuracy"] >= base["accuracy"] - max_accuracy_drop - 1e-9}
    if not eligible:
        return None
    return min(eligible, key=lambda name: _served_key(served_scores(eligible[name]["samples"])))


def served_table(base: dict, candidates: dict[str, dict], chosen: str | None) -> str:
    lines = ["| model | accuracy | served ECE | served AUROC | served Brier skill | served std | raw Brier skill "
             "| serve | picked |", "|---|---|---|---|---|---|---|---|---|"]
    for name, e in candidates.items():
        s = served_scores(e["samples"])
        mark = "**yes**" if name == chosen else ""
        lines.append(f"| {name} | {_f(e['summary']['accuracy'])} | {_f(s['ece'])} | {_f(s['auroc'])} | "
                     f"{_f(s['skill'])} | {_f(s['std'])} | {_f(s['raw_skill'])} | {serve_choice(s)} | {mark} |")
    return f"starting model accuracy {_f(base['accuracy'])}\n\n" + "\n".join(lines)


def candidates_table(base: dict, candidates: dict[str, dict], chosen: str | None) -> str:
    lines = ["| model | accuracy | ECE sampled | ECE expected | AUROC expected | picked |", "|---|---|---|---|---|---|"]
    for name, s in [("starting model", base), *candidates.items()]:
        mark = "**yes**" if name == chosen else ""
        lines.append(f"| {name} | {_f(s['accuracy'])} | {_f(s['sampled']['ece'])} | {_f(s['expected']['ece'])} | "
                     f"{_f(s['expected']['auroc'])} | {mark} |")
    return "\n".join(lines)


def _name(path: Path) -> str:
    # eval files live in one folder per evaluated model: name the candidate after that folder
    return path.parent.name if path.name == "eval.json" else path.stem


def read_eval(path: str, keys: tuple[str, ...] = ("summary", "samples")) -> dict:
    """One eval.json (`corea train --eval-only` writes it) with `keys`; ValueError naming the file otherwise."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {path}: {err}") from None
    missing = [k for k in keys if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(f"{path} is not an eval.json of `corea train --eval-only` (no {', '.join(missing)})")
    return data


def main(argv: list[str] | None = None) -> int:
    """Print the candidates' table and the pick; exit 2 naming a file that is not an eval.json."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m corea_engine.training.pick",
                                     description="pick a checkpoint by its validation-split evaluation")
    parser.add_argument("--base", required=True, help="eval JSON of the starting model on the validation split")
    parser.add_argument("candidates", nargs="+", help="eval JSON of each checkpoint on the validation split "
                        "(named after its folder when the file is eval.json, else after the file)")
    parser.add_argument("--max-accuracy-drop", type=float, default=0.02,
                        help="accuracy a candidate may lose against the base and stay eligible (default 0.02)")
    parser.add_argument("--rule", choices=RULES, default="sampled-ece",
                        help="the rule fixed before the run: sampled-ece (runs 1-7, the default) or served "
                             "(run 8 on; needs the eval files' samples)")
    args = parser.parse_args(argv)
    keys = ("summary", "samples") if args.rule == "served" else ("summary",)
    try:
        base = read_eval(args.base, ("summary",))["summary"]
        found = {_name(Path(p)): read_eval(p, keys) for p in args.candidates}
    except ValueError as err:
        parser.error(str(err))
    if args.rule == "served":
        chosen = pick_served(base, found, args.max_accuracy_drop)
        print(served_table(base, found, chosen))
    else:
        summaries = {name: e["summary"] for name, e in found.items()}
        chosen = pick_checkpoint(base, summaries, args.max_accuracy_drop)
        print(candidates_table(base, summaries, chosen))
    print(f"\npicked: {chosen}" if chosen else "\npicked: none (every checkpoint lost more accuracy than allowed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
