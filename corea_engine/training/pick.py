"""Choose a training checkpoint on the validation split, by a rule fixed before looking at test.

Rule: among checkpoints whose validation accuracy is at most `max_accuracy_drop` below the
starting model's, the one with the lowest ECE of the sampled confidence (the digit the
runtime writes), then of the expected confidence. A checkpoint that states no confidence on
some question ranks last. The pick is then evaluated once on the test split.

    python -m corea_engine.training.pick --base VAL_BASE/eval.json VAL_CKPT1/eval.json ...
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .report import _f


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


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="pick a checkpoint by its validation-split evaluation")
    parser.add_argument("--base", required=True, help="eval JSON of the starting model on the validation split")
    parser.add_argument("candidates", nargs="+", help="eval JSON of each checkpoint on the validation split")
    parser.add_argument("--max-accuracy-drop", type=float, default=0.02)
    args = parser.parse_args()
    base = json.loads(Path(args.base).read_text())["summary"]
    found = {_name(Path(p)): json.loads(Path(p).read_text())["summary"] for p in args.candidates}
    chosen = pick_checkpoint(base, found, args.max_accuracy_drop)
    print(candidates_table(base, found, chosen))
    print(f"\npicked: {chosen}" if chosen else "\npicked: none (every checkpoint lost more accuracy than allowed)")
