"""`corea eval` and `corea calibrate` end to end: real model, real files, plots read back."""

from __future__ import annotations

import json
import math

import pytest

from corea_engine.cli import main
from corea_engine.evaluation.report import PLOTS

OUTPUTS = ("samples.jsonl", "metrics.json", "report.md", *PLOTS)


def _check_outputs(out, n):
    from PIL import Image  # matplotlib's own dependency

    for name in OUTPUTS:
        assert (out / name).stat().st_size > 0, name
    for name in PLOTS:
        with Image.open(out / name) as image:
            image.load()
            assert image.size[0] >= 300 and image.size[1] >= 300, name
    import matplotlib.image

    assert matplotlib.image.imread(out / "reliability.png").ndim == 3
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == n
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["slm"]["n"] == n
    assert "# " in (out / "report.md").read_text()
    return rows, metrics


def test_eval_in_process_on_ten_gsm8k_questions(tmp_path, capsys):
    out = tmp_path / "gsm8k"
    # Small outputs keep the run short; the embedded default stands in for the LLM (same weights).
    code = main(["eval", "--dataset", "gsm8k", "--limit", "10", "--llm-model", "smollm2-135m",
                 "--threshold", "0.65", "--max-reasoning-chars", "80", "--max-answer-chars", "16",
                 "--concurrency", "10", "--out", str(out)])
    assert code == 0
    rows, metrics = _check_outputs(out, 10)
    assert [r["id"] for r in rows] == [f"gsm8k-test-{i}" for i in range(10)]
    for r in rows:
        # Both tiers' answers are known on every question (the other tier was asked too) ...
        assert r["slm_correct"] is not None and r["llm_correct"] is not None
        assert r["answered_by"] == ("llm" if r["deferred"] else "slm")
        # ... and the served decision is the policy applied to the confidence the cascade read.
        assert r["confidence"] is not None and r["deferred"] == (r["confidence"] < 0.65)
        # The SLM asked again alone (deferred questions) reads the same confidence: greedy decoding.
        assert r["slm_confidence"] == pytest.approx(r["confidence"], abs=1e-3)
        assert r["cost"] > 0 and r["llm_only_cost"] > 0
    assert metrics["llm"] is not None and len(metrics["sweep"]) >= 2
    simulated = metrics["cascade"]
    measured = metrics["online"]
    assert simulated["deferral_rate"] == pytest.approx(measured["deferral_rate"], abs=0.1 + 1e-9)
    deferred = sum(r["deferred"] for r in rows) / 10
    assert measured["deferral_rate"] == deferred
    assert measured["accuracy"] == sum(r["correct"] for r in rows) / 10


def test_offline_eval_and_calibrate_on_recorded_outputs(tmp_path, capsys):
    out = tmp_path / "offline"
    assert main(["eval", "--offline", "--slm", "rlcr:commonsenseqa:RLCR", "--llm", "rlcr:commonsenseqa:Base",
                 "--threshold", "0.6", "--out", str(out)]) == 0
    rows, metrics = _check_outputs(out, 1221)
    assert metrics["cascade"]["threshold"] == 0.6
    # RLCR states 0.6 or more on all but 13% of CommonsenseQA: at 0.6 that share is deferred.
    below = sum(1 for r in rows if r["slm_confidence"] < 0.6) / len(rows)
    assert metrics["cascade"]["deferral_rate"] == pytest.approx(below)

    # The offline samples file is itself valid input, and calibrate reads it.
    capsys.readouterr()
    result_file = tmp_path / "calibration.json"
    assert main(["calibrate", "--samples", str(out / "samples.jsonl"), "--target-deferral", "0.2",
                 "--bootstrap", "100", "--out", str(result_file)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(result_file.read_text())
    assert printed["calibration"]["expected"]["deferral_rate"] == pytest.approx(0.2)
    assert printed["holdout"]["n"] == round(1221 * 0.5)
    assert printed["target_in_two_sample_interval"] is True
    low, high = printed["calibration"]["bootstrap_95"]["accuracy"]
    assert low <= printed["calibration"]["expected"]["accuracy"] <= high


def test_model_records_schema_and_accuracy_target(tmp_path, capsys):
    slm = tmp_path / "slm.jsonl"
    llm = tmp_path / "llm.jsonl"
    # 40 questions: the SLM is right when confident (0.9), wrong when not (0.2); the LLM always right.
    slm.write_text("".join(json.dumps({"id": f"q{i}", "correct": i % 2 == 0, "confidence": 0.9 if i % 2 == 0 else 0.2,
                                       "tokens": 10}) + "\n" for i in range(40)))
    llm.write_text("".join(json.dumps({"id": f"q{i}", "correct": True, "confidence": None, "tokens": 50}) + "\n"
                           for i in range(40)))
    assert main(["calibrate", "--slm", str(slm), "--llm", str(llm), "--max-accuracy-drop", "0",
                 "--holdout", "0", "--bootstrap", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    # Deferring exactly the unconfident half loses nothing: threshold 0.9, nothing tied deferred.
    assert result["policy"] == {"threshold": 0.9, "tie_defer_prob": 0.0}
    assert result["calibration"]["expected"]["accuracy_drop"] == 0.0
    assert result["calibration"]["expected"]["deferral_rate"] == 0.5
    assert math.isclose(result["calibration"]["expected"]["cost_reduction"], 1 - (10 + 0.5 * 500) / 500)


@pytest.mark.parametrize("argv,message", [
    (["eval", "--offline", "--out", "x"], "--samples"),
    (["eval", "--offline", "--slm", "rlcr:math-500:GPT9", "--out", "x"], "unknown recorded model"),
    (["eval", "--dataset", "mnist", "--out", "x"], "unknown dataset"),
    (["calibrate", "--slm", "rlcr:math-500:RLCR", "--llm", "rlcr:math-500:Base", "--target-deferral", "2"], "out of range"),
    (["calibrate", "--slm", "/nonexistent.jsonl", "--llm", "x", "--target-deferral", "0.2"], "cannot read"),
    (["calibrate", "--slm", "rlcr:math-500:RLCR", "--llm", "rlcr:math-500:Base", "--target-deferral", "0.2",
      "--calibrator", "/nonexistent.json"], "--calibrator: cannot read /nonexistent.json"),
])
def test_bad_input_exits_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_eval_against_a_running_server(slm_executor, tmp_path, capsys):
    """`corea eval --address`: the generated stub against a real corea.v1.Corea server on loopback."""
    from cascade_servers import corea_server, llm_server, stand_in_llm

    llm_executor = stand_in_llm(slm_executor)
    llm = llm_server(llm_executor)
    corea = corea_server(slm_executor, llm.address, threshold=0.65)
    try:
        out = tmp_path / "remote"
        assert main(["eval", "--dataset", "commonsenseqa", "--limit", "4", "--address", corea.address,
                     "--out", str(out)]) == 0
        rows, metrics = _check_outputs(out, 4)
        assert all(r["threshold"] == 0.65 and r["llm_correct"] is not None for r in rows)
        assert all(r["llm_model"] == "stand-in-llm" or not r["deferred"] for r in rows)
        assert metrics["online"]["deferral_rate"] == sum(r["deferred"] for r in rows) / 4
        # Flags for an in-process cascade are refused with --address (the server has its own settings).
        assert main(["eval", "--address", corea.address, "--llm-model", "x", "--out", str(out)]) == 2
    finally:
        corea.close()
        llm.close()
        llm_executor.close()


@pytest.mark.parametrize("command", ["solve", "calibrate", "serve"])
def test_an_unknown_flag_is_told_with_its_own_commands_usage(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--bogus-flag", "1"])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert f"usage: corea {command}" in err and "error: unrecognized arguments: --bogus-flag" in err
