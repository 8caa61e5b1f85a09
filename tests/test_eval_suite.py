"""`corea eval --suite`: RouteLLM's metrics worked by hand, the calibrator, and whole suites run.

The offline suites read the recorded 7B outputs; the online one runs the embedded model (the same
SmolLM2 stands in for the LLM, as in `corea eval`) on two questions per dataset with tiny budgets.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from corea_engine.cli import main
from corea_engine.evaluation import metrics
from corea_engine.evaluation.calibrators import CalibratorError, IsotonicCalibrator
from corea_engine.evaluation.deferral import apgr, cpt, deferral_curve, random_curve, routing_metrics
from corea_engine.evaluation.records import Columns
from corea_engine.evaluation.suite_report import PLOTS

SUITE_FILES = ("suite.json", "report.md", "rows.jsonl", "calibrator.json", *PLOTS)


def _cols(conf, slm_correct, llm_correct, slm_cost=1.0, llm_cost=10.0) -> Columns:
    n = len(conf)
    return Columns(np.array(slm_correct, dtype=float), np.array(conf, dtype=float), np.full(n, slm_cost),
                   np.array(llm_correct, dtype=float), np.full(n, llm_cost))


# ---------------------------------------------------------------------------------------------
# APGR and CPT by hand


def test_apgr_and_cpt_on_a_case_worked_by_hand():
    # Four questions, confidences 0.9 > 0.7 > 0.5 > 0.3. The SLM is right on the two confident ones,
    # the LLM on all: SLM 50%, LLM 100%, a gap of 0.5.
    cols = _cols([0.9, 0.7, 0.5, 0.3], [1, 1, 0, 0], [1, 1, 1, 1])
    curve = deferral_curve(cols)
    # Deferring the least confident first: x = 0, 0 (threshold 0.3 defers nothing), 1/4, 1/2, 3/4, 1.
    assert curve.deferral == pytest.approx((0, 0, 0.25, 0.5, 0.75, 1.0))
    assert curve.accuracy == pytest.approx((0.5, 0.5, 0.75, 1.0, 1.0, 1.0))
    # Cost: every SLM run (1) plus the LLM (10) on each deferred question.
    assert curve.cost == pytest.approx((1, 1, 3.5, 6, 8.5, 11))
    # PGR = 0, 0, 0.5, 1, 1, 1; trapezoids: 0 + 0.0625 + 0.1875 + 0.25 + 0.25 = 0.75.
    assert apgr(curve) == pytest.approx(0.75)
    # PGR reaches 0.5 at x = 1/4 exactly; 0.8 on the segment (1/4, 0.5) -> (1/2, 1): 1/4 + 0.3/0.5 * 1/4 = 0.4.
    assert cpt(curve, 0.5) == pytest.approx(0.25)
    assert cpt(curve, 0.8) == pytest.approx(0.4)
    assert routing_metrics(curve) == pytest.approx({"gap": 0.5, "apgr": 0.75, "cpt_50": 0.25, "cpt_80": 0.4,
                                                    "random_apgr": 0.5, "random_cpt_50": 0.5, "random_cpt_80": 0.8})


def test_a_perfect_and_an_inverted_router_and_no_gap():
    # Wrong answers stated lowest: each deferral recovers a wrong answer until none is left.
    perfect = deferral_curve(_cols([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0], [1, 1, 1, 1]))
    # PGR rises 0 -> 1 over x in [0, 0.5], then stays 1: area 0.25 + 0.5.
    assert apgr(perfect) == pytest.approx(0.75)
    inverted = deferral_curve(_cols([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0], [1, 1, 1, 1]))
    # Defers the right answers first: PGR stays 0 to x = 0.5, then rises to 1: area 0.25.
    assert apgr(inverted) == pytest.approx(0.25)
    assert cpt(inverted, 0.5) == pytest.approx(0.75)
    same = deferral_curve(_cols([0.9, 0.1], [1, 0], [1, 0]))
    assert apgr(same) is None and cpt(same, 0.5) is None  # no gap to recover


def test_ties_and_missing_confidence_follow_the_runtime_policy():
    # Two tied at 0.6 (one right, one wrong) and one that stated nothing (always deferred first).
    cols = _cols([0.6, 0.6, math.nan], [1, 0, 0], [1, 1, 1])
    curve = deferral_curve(cols)
    # Origin: SLM alone (1/3); threshold 0.6 defers the missing one; above 0.6 defers all.
    assert curve.deferral == pytest.approx((0, 1 / 3, 1))
    assert curve.accuracy == pytest.approx((1 / 3, 2 / 3, 1))
    # PGR 0, 0.5, 1 at x 0, 1/3, 1: area 1/3 * 0.25 + 2/3 * 0.75 = 7/12.
    assert apgr(curve) == pytest.approx(7 / 12)


def test_random_deferral_has_apgr_one_half_in_expectation():
    assert apgr(random_curve(0.3, 0.7, 1.0, 10.0)) == pytest.approx(0.5)
    rng = np.random.default_rng(7)
    n = 60
    slm_correct = rng.random(n) < 0.3
    llm_correct = rng.random(n) < 0.8
    values = []
    for _ in range(300):
        # A confidence that knows nothing: deferring by it is deferring at random.
        curve = deferral_curve(_cols(rng.random(n), slm_correct, llm_correct))
        values.append(apgr(curve))
    mean, sem = float(np.mean(values)), float(np.std(values) / math.sqrt(len(values)))
    assert abs(mean - 0.5) < max(4 * sem, 0.005), (mean, sem)
    # ... while each run scatters (the mean is not 0.5 by construction of every run).
    assert np.std(values) > 0.01


# ---------------------------------------------------------------------------------------------
# the calibrator


def test_isotonic_calibrator_fits_applies_saves_and_loads(tmp_path):
    from sklearn.isotonic import IsotonicRegression

    # The model says 0.9 and is right 40% of the time; says 0.3 and is right 20% of the time.
    conf = np.array([0.9] * 10 + [0.3] * 10 + [math.nan])
    correct = np.array([1] * 4 + [0] * 6 + [1] * 2 + [0] * 8 + [0])
    cal = IsotonicCalibrator.fit(conf, correct, source="sampled")
    assert cal.n == 20 and cal.source == "sampled"
    out = cal.apply(conf)
    assert out[0] == pytest.approx(0.4) and out[10] == pytest.approx(0.2) and math.isnan(out[-1])
    # Between and beyond the knots it is scikit-learn's own prediction (linear, clipped).
    probe = np.array([0.0, 0.3, 0.5, 0.75, 1.0])
    reference = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(conf[:20], correct[:20])
    assert cal.apply(probe) == pytest.approx(reference.predict(probe))
    assert metrics.ece(out, correct) == pytest.approx(0.0)  # calibrated on its own data
    path = tmp_path / "cal.json"
    cal.save(path)
    again = IsotonicCalibrator.load(path)
    assert again == cal
    assert again.apply(probe) == pytest.approx(cal.apply(probe))


def test_calibrator_refuses_bad_input(tmp_path):
    with pytest.raises(CalibratorError, match="at least 2"):
        IsotonicCalibrator.fit([0.5, math.nan], [1, 0])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "corea.calibrator/1", "kind": "isotonic", "x": [0.2, 0.1], "y": [0.1, 0.2]}))
    with pytest.raises(CalibratorError, match="non-decreasing"):
        IsotonicCalibrator.load(bad)
    bad.write_text("{}")
    with pytest.raises(CalibratorError, match="not a corea.calibrator/1"):
        IsotonicCalibrator.load(bad)


# ---------------------------------------------------------------------------------------------
# whole suites

SECTION_KEYS = {"role", "n", "accuracy", "deferral_rate", "deferral_rate_drawn", "accuracy_drop", "cost", "routing",
                "curve", "calibration", "decision"}
SHIFT_KEYS = {"intended_deferral", "in_domain_deferral", "realised_deferral", "deferral_change",
              "in_domain_accuracy_drop", "accuracy_drop", "accuracy_drop_change", "in_domain_ece_raw", "ece_raw",
              "ece_change_raw", "in_domain_ece_calibrated", "ece_calibrated", "ece_change_calibrated"}


def _check_files(out):
    from PIL import Image

    for name in SUITE_FILES:
        assert (out / name).stat().st_size > 0, name
    for name in PLOTS:
        with Image.open(out / name) as image:
            image.load()
            assert image.size[0] >= 300 and image.size[1] >= 300, name
    result = json.loads((out / "suite.json").read_text())
    assert result["schema"] == "corea.eval_suite/1"
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert not (out / "rows.partial.jsonl").exists()
    return result, rows


def _check_section(part, *, expected_confidence: bool, timed: bool, orders):
    assert set(part) == SECTION_KEYS
    for key in ("slm", "llm", "cascade"):
        assert 0 <= part["accuracy"][key] <= 1
    assert 0 <= part["deferral_rate"] <= 1
    assert set(part["cost"]) == {"slm_only", "llm_only", "cascade", "saved", "saved_fraction"}
    assert part["cost"]["saved"] == pytest.approx(part["cost"]["llm_only"] - part["cost"]["cascade"])
    assert set(part["routing"]) == {"gap", "apgr", "cpt_50", "cpt_80", "random_apgr", "random_cpt_50", "random_cpt_80"}
    assert part["curve"]["deferral"][0] == 0 and part["curve"]["deferral"][-1] == pytest.approx(1.0)
    for source in ("sampled", "calibrated"):
        assert set(part["calibration"][source]) >= {"ece", "auroc", "brier", "n"}
    assert (part["calibration"]["expected"] is not None) == expected_confidence
    for order in ("answer_first", "confidence_first"):
        d = part["decision"][order]
        if order not in orders:
            assert d is None
            continue
        assert d["n"] == part["n"] and d["slm_tokens_mean"] > 0
        for key in ("p50_ms", "p90_ms", "p99_ms", "confidence_p50_ms"):
            assert (d[key] is not None) == timed, (order, key)
        if timed:
            assert 0 < d["p50_ms"] <= d["p90_ms"] <= d["p99_ms"]


def test_offline_suite_on_the_recorded_outputs(tmp_path, capsys):
    from corea_engine.evaluation.calibration import Target, calibrate, split
    from corea_engine.evaluation.records import columns, join, rlcr_model_records

    out = tmp_path / "answer-prob"
    assert main(["eval", "--suite", "answer-prob", "--out", str(out)]) == 0
    result, rows = _check_files(out)
    assert result["config"]["seed"] == 0 and result["config"]["target_deferral"] == 0.3
    assert result["config"]["command"].startswith("corea eval --suite answer-prob")
    assert set(result["datasets"]) == {"math-500", "commonsenseqa"}
    assert len(rows) == 500 + 1221
    for name, part in [*result["datasets"].items(), *result["overall"].items()]:
        _check_section(part, expected_confidence=False, timed=False, orders=("answer_first",))
    assert set(result["shift"]) == {"commonsenseqa", "out_of_domain"}
    for shift in result["shift"].values():
        assert set(shift) == SHIFT_KEYS and all(v is not None for v in shift.values())

    # First principles on the recorded files: the policy is calibrate() on the same seeded half ...
    def cols(name):
        return columns(join(rlcr_model_records(name, "Answer-Prob"), rlcr_model_records(name, "RLCR")))

    math500 = cols("math-500")
    fit_index, held_index = split(500, 0.5, 0)
    policy = calibrate(math500.subset(fit_index), Target("deferral_rate", 0.3), bootstrap=0).policy
    assert result["fit"]["policy"] == pytest.approx({"threshold": policy.threshold, "tie_defer_prob": policy.tie_defer_prob})
    assert result["fit"]["intended_deferral"] == pytest.approx(0.3)
    # ... applied unchanged out of domain: the deferral is the runtime rule's, the accuracies the files'.
    csqa = cols("commonsenseqa")
    part = result["datasets"]["commonsenseqa"]
    assert part["deferral_rate"] == pytest.approx(float(np.mean(policy.weights(csqa.slm_confidence))))
    assert part["accuracy"]["slm"] == pytest.approx(csqa.slm_correct.mean())
    assert part["accuracy"]["llm"] == pytest.approx(csqa.llm_correct.mean())
    assert part["calibration"]["sampled"]["ece"] == pytest.approx(metrics.ece(csqa.slm_confidence, csqa.slm_correct))
    assert result["shift"]["commonsenseqa"]["realised_deferral"] == part["deferral_rate"]
    # The in-domain rows are the held-out half. RLCR is more accurate than Answer-Prob on both sets
    # and Answer-Prob's confidence ranks better than chance: APGR above the random 0.5 (above 1 where
    # the cascade beats the LLM alone, as on CommonsenseQA with its 0.5-point gap).
    assert result["datasets"]["math-500"]["n"] == len(held_index)
    for p in result["datasets"].values():
        r = p["routing"]
        assert r["apgr"] > 0.5 and r["cpt_50"] <= r["cpt_80"] and r["random_apgr"] == pytest.approx(0.5)
    # The calibrator file is the fitted one and maps the held-out confidences as the report says.
    cal = IsotonicCalibrator.load(out / "calibrator.json")
    held = math500.subset(held_index)
    assert result["datasets"]["math-500"]["calibration"]["calibrated"]["ece"] == pytest.approx(
        metrics.ece(cal.apply(held.slm_confidence), held.slm_correct))
    report = (out / "report.md").read_text()
    assert "## Shift" in report and "APGR" in report

    # The rows file is enough to redo the analysis: same figures, and another target moves the policy.
    again = tmp_path / "again"
    assert main(["eval", "--suite", "answer-prob", "--rows", str(out / "rows.jsonl"), "--out", str(again)]) == 0
    redone = json.loads((again / "suite.json").read_text())
    assert redone["datasets"] == result["datasets"] and redone["shift"] == result["shift"]
    assert main(["eval", "--suite", "answer-prob", "--rows", str(out / "rows.jsonl"), "--target-deferral", "0.6",
                 "--out", str(again)]) == 0
    assert json.loads((again / "suite.json").read_text())["fit"]["intended_deferral"] == pytest.approx(0.6)


def test_tiny_online_suite_produces_every_field(tmp_path, capsys, monkeypatch):
    # Served at threshold 1: every question is deferred, so the confidence-first order must decide
    # at its confidence (a handful of SLM tokens) while answer-first spends the whole answer.
    monkeypatch.setenv("COREA_THRESHOLD", "1.0")
    # A loaded CI machine can take longer than the default 30 s per stand-in LLM call: a timeout
    # would degrade the answer (and open the breaker), which is not what this test is about.
    monkeypatch.setenv("COREA_LLM_TIMEOUT_S", "900")
    out = tmp_path / "online"
    assert main(["eval", "--suite", "default", "--limit", "2", "--llm-model", "smollm2-135m", "--holdout", "0",
                 "--max-reasoning-chars", "40", "--max-answer-chars", "12", "--concurrency", "4",
                 "--out", str(out)]) == 0
    result, rows = _check_files(out)
    assert result["config"]["questions"] == {"gsm8k": 2, "commonsenseqa": 2, "triviaqa": 2, "math500": 2}
    assert result["config"]["cascade_config"]["threshold"] == 1.0
    assert result["config"]["second_contract"] == "json_confidence_first"
    for part in [*result["datasets"].values(), *result["overall"].values()]:
        _check_section(part, expected_confidence=True, timed=True, orders=("answer_first", "confidence_first"))
    assert result["fit"]["intended_deferral"] == pytest.approx(0.3)
    assert set(result["shift"]["out_of_domain"]) == SHIFT_KEYS
    assert len(rows) == 8
    for row in rows:
        assert row["slm_correct"] is not None and row["llm_correct"] is not None
        assert row["served"]["deferred"] and row["served"]["answered_by"] == "llm"
        first, late = row["decision"]["confidence_first"], row["decision"]["answer_first"]
        assert first["deferred"] and late["deferred"], row
        assert not row["served"]["degraded"], row["served"]["degraded_reason"]
        # `{"confidence": 0.D` is 8 tokens (a few more if the model spends some on the whitespace
        # the grammar allows); answer-first has written its reasoning and answer by then.
        assert first["slm_tokens"] <= 16 and first["slm_tokens"] < late["slm_tokens"], row["decision"]
        assert first["ms"] >= first["confidence_ms"] > 0
    json_first = result["overall"]["out_of_domain"]["decision"]
    assert json_first["confidence_first"]["slm_tokens_mean"] < json_first["answer_first"]["slm_tokens_mean"]


@pytest.mark.parametrize("argv,message", [
    (["eval", "--suite", "nope", "--out", "x"], "unknown suite"),
    (["eval", "--suite", "rlcr", "--offline", "--out", "x"], "names its own data"),
    (["eval", "--suite", "rlcr", "--confidence-source", "expected", "--out", "x"], "sampled (stated) confidence only"),
    (["eval", "--suite", "rlcr", "--target-deferral", "2", "--out", "x"], "--target-deferral"),
    (["eval", "--suite", "rlcr", "--holdout", "1", "--out", "x"], "--holdout"),
    (["eval", "--suite", "rlcr", "--rows", "/nonexistent.jsonl", "--out", "x"], "cannot read"),
])
def test_suite_bad_input_exits_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
