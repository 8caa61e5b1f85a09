"""The training report: curve PNG from a JSONL log and the before/after table from eval summaries."""

from __future__ import annotations

import json
import math
from pathlib import Path

from corea_engine.training.evaluate import Sample, summarize
from corea_engine.training.report import write_report


def _samples(conf: float, correct_pattern: list[bool]) -> list[Sample]:
    return [Sample(f"s{i}", "sum-1d" if i % 2 else "product-4d", "1", c, conf, conf, 10) for i, c in enumerate(correct_pattern)]


def test_summary_and_report(tmp_path):
    pattern = [True, False, False, False]
    before = summarize(_samples(0.9, pattern))
    after = summarize(_samples(0.3, pattern) + [Sample("x", "sum-1d", None, False, math.nan, math.nan, 5)])
    assert before["accuracy"] == 0.25 and before["sampled"]["ece"] == 0.9 - 0.25
    assert after["sampled"]["format_adherence"] == 0.8  # the unparsed sample states no confidence
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"step": s, "reward": -1 + s / 10, "rewards/calibration/mean": -0.5,
                                       "mean_confidence": 0.8 - s / 20, f"confidence/sum-{1 + s % 2}d": 0.5}) + "\n"
                           for s in range(1, 6)))
    for name, summary in (("before.json", before), ("after.json", after)):
        (tmp_path / name).write_text(json.dumps({"summary": summary}))
    text = write_report(log, tmp_path / "before.json", tmp_path / "after.json", tmp_path / "out")
    png = (tmp_path / "out" / "reward_curve.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    # after: ECE over the 4 samples that stated 0.3, one of them right (the unparsed one is left out)
    assert "| ece | sampled | 0.650 | 0.050 | -92% |" in text
    assert "| product-4d |" in text and "| sum-1d |" in text


def test_level_series_collects_each_levels_steps():
    from corea_engine.training.report import level_series

    rows = [{"step": 1, "confidence/sum-1d": 0.9, "confidence/product-4d": 0.8, "rewards/format/mean": 1.0},
            {"step": 2, "confidence/sum-1d": 0.7}]
    assert level_series(rows, "confidence") == {"product-4d": ([1], [0.8]), "sum-1d": ([1, 2], [0.9, 0.7])}


def test_limit_recomputes_over_the_first_samples(tmp_path):
    from dataclasses import asdict

    from corea_engine.training.report import load_summary

    samples = _samples(0.9, [True, True, False, False, False, False])
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"summary": summarize(samples), "samples": [asdict(s) for s in samples]}))
    assert load_summary(path)["accuracy"] == 2 / 6
    assert load_summary(path, limit=2)["accuracy"] == 1.0


def _summary(accuracy: float, ece_sampled: float, ece_expected: float, adherence: float = 1.0) -> dict:
    return {"accuracy": accuracy, "sampled": {"ece": ece_sampled, "format_adherence": adherence, "auroc": 0.5},
            "expected": {"ece": ece_expected, "auroc": 0.5}}


def test_pick_checkpoint_keeps_accuracy_then_lowest_ece():
    from corea_engine.training.pick import candidates_table, pick_checkpoint

    base = _summary(0.20, 0.70, 0.50)
    candidates = {
        "step-25": _summary(0.19, 0.40, 0.20),
        "step-50": _summary(0.17, 0.10, 0.10),  # best ECE but 3 points of accuracy lost: not eligible
        "step-75": _summary(0.18, 0.40, 0.15),  # exactly 2 points down: eligible, wins the tie on expected ECE
        "step-100": _summary(0.30, 0.05, 0.05, adherence=0.95),  # stated no confidence on 5%: ranks last
    }
    assert pick_checkpoint(base, candidates) == "step-75"
    assert pick_checkpoint(base, {"step-50": candidates["step-50"]}) is None
    assert pick_checkpoint(base, {"step-50": candidates["step-50"]}, max_accuracy_drop=0.05) == "step-50"
    table = candidates_table(base, candidates, "step-75")
    assert "| step-75 | 0.180 | 0.400 | 0.150 | 0.500 | **yes** |" in table


def _eval_samples(conf, correct) -> list[dict]:
    return [{"id": f"q-{i:03d}", "correct": bool(c), "expected": x, "sampled": x} for i, (x, c) in enumerate(zip(conf, correct))]


def test_pick_served_prefers_the_confidence_that_ranks_after_cross_fitting():
    import numpy as np

    from corea_engine.training.pick import pick_served, serve_choice, served_scores, served_table

    rng = np.random.default_rng(3)
    correct = rng.random(200) < 0.4
    ranks = np.clip(0.2 + 0.5 * correct + rng.normal(0, 0.1, 200), 0, 1)
    flat = np.full(200, 0.3)  # calibrated in the large (ECE ~0 after the map), explains nothing
    fewer = correct & (rng.random(200) < 0.8)  # ranks perfectly, but loses ~8 points of accuracy
    missing = ranks.copy()
    missing[5] = None
    evals = {name: {"summary": {"accuracy": float(np.mean(c))}, "samples": _eval_samples(x, c)}
             for name, x, c in (("flat", flat, correct), ("ranks", ranks, correct),
                                ("fewer", fewer * 0.9 + 0.05, fewer), ("missing", missing, correct))}
    base = {"accuracy": float(np.mean(correct))}

    good, level = served_scores(evals["ranks"]["samples"]), served_scores(evals["flat"]["samples"])
    assert good["skill"] > 0.5 and good["auroc"] > 0.9 and good["std"] > 0.3
    assert abs(level["skill"]) < 0.05 and level["auroc"] == 0.5 and level["std"] < 0.05
    assert np.isnan(served_scores(evals["missing"]["samples"])["skill"])
    # the halves follow the question ids, not the order the samples come in
    assert served_scores(evals["ranks"]["samples"][::-1]) == good

    assert pick_served(base, evals) == "ranks"
    assert pick_served(base, {k: evals[k] for k in ("flat", "fewer", "missing")}) == "flat"
    assert pick_served(base, {"fewer": evals["fewer"]}) is None
    assert "| ranks |" in served_table(base, evals, "ranks") and "**yes**" in served_table(base, evals, "ranks")

    # serve the map only where it explains more than the raw confidence on the same halves
    exact = rng.random(200)
    outcome = rng.random(200) < exact  # `exact` is P(right): nothing for a map to correct
    assert serve_choice(served_scores(_eval_samples(exact, outcome))) == "raw"
    assert serve_choice(served_scores(_eval_samples(exact * 0.3, outcome))) == "isotonic"  # underconfident


def test_pick_command_reproduces_run_8_and_refuses_what_is_not_an_eval(tmp_path, capsys):
    import pytest

    from corea_engine.training.pick import main

    runs = Path(__file__).resolve().parent.parent / "benchmarks" / "training"
    candidates = sorted(str(p) for p in (runs / "run8_rlcr_continued").glob("val_*.json"))
    assert main(["--rule", "served", "--base", f"{runs}/graded_val200_base.json", *candidates]) == 0
    assert capsys.readouterr().out.endswith("picked: val_run7_step15\n")  # the README's Run 8 pick
    # the README's Run 13: picked, and served raw (the map fitted on validation explains less)
    run13 = sorted(str(p) for p in (runs / "run13_greedy_warm").glob("val_*.json"))
    assert main(["--rule", "served", "--base", f"{runs}/graded_val200_base.json", *run13]) == 0
    rows = {line.split(" | ")[0].strip("| "): line for line in capsys.readouterr().out.splitlines() if "val_run13" in line}
    assert "| raw | **yes** |" in rows["val_run13_step1"] and "| raw |" in rows["val_run13_warm"]

    settings = f"{runs}/run8_rlcr_continued/train_settings.json"
    for argv, says in ((["--base", str(tmp_path / "none.json"), settings], "cannot read"),
                       (["--rule", "served", "--base", f"{runs}/graded_val200_base.json", settings], "no summary, samples")):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2 and says in capsys.readouterr().err
