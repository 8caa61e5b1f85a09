"""Metrics on the recorded RLCR outputs against values computed here from first principles.

The expected values are written out with plain Python (Decimal binning, pairwise AUROC, loops),
not by calling corea_engine.evaluation.metrics.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal

import numpy as np
import pytest

from corea_engine.contract import ContractError, parse_tags
from corea_engine.evaluation import metrics
from corea_engine.evaluation.datasets import data_root
from corea_engine.evaluation.records import columns, join, read_model_records

MODELS = ("Base", "RLVR", "Answer-Prob", "RLCR")


def _rows(name):
    with open(data_root() / "rlcr_eval_outputs" / f"{name}.jsonl") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module", params=["math-500", "commonsenseqa"])
def recorded(request):
    return request.param, _rows(request.param)


def _first_principles(conf: list[float], correct: list[int]) -> dict:
    n = len(conf)
    # ECE: bin k = [k/10, (k+1)/10), last bin [0.9, 1.0]; the decimal value decides the bin.
    bins: dict[int, list[tuple[float, int]]] = {}
    for c, y in zip(conf, correct):
        k = min(int(Decimal(repr(c)) * 10), 9)
        bins.setdefault(k, []).append((c, y))
    ece = 0.0
    for members in bins.values():
        acc = sum(y for _, y in members) / len(members)
        mean_c = sum(c for c, _ in members) / len(members)
        ece += len(members) / n * abs(acc - mean_c)
    # AUROC: every (correct, wrong) pair; a tie counts 1/2.
    pos = [c for c, y in zip(conf, correct) if y == 1]
    neg = [c for c, y in zip(conf, correct) if y == 0]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return {
        "pass@1": sum(correct) / n,
        "mean_confidence": sum(conf) / n,
        "ece": ece,
        "auroc": wins / (len(pos) * len(neg)),
        "brier": sum((c - y) ** 2 for c, y in zip(conf, correct)) / n,
    }


@pytest.mark.parametrize("model", MODELS)
def test_calibration_metrics_match_first_principles(recorded, model):
    name, rows = recorded
    correct = [r[f"{model}-evals"][0] for r in rows]
    parsed = []
    for r in rows:
        try:
            parsed.append(parse_tags(r[f"{model}-output_0"]).confidence)
        except ContractError:
            parsed.append(math.nan)
    recorded_conf = [r[f"{model}-confidence_levels"][0] for r in rows]
    # Our parser agrees with the authors' extraction wherever their confidence tag parsed.
    adherent = [r[f"{model}-conf_format_adherence"][0] == 1 for r in rows]
    assert all(abs(p - c) < 1e-12 for p, c, a in zip(parsed, recorded_conf, adherent) if a)

    expected = _first_principles(recorded_conf, correct)
    got = metrics.calibration_summary(parsed, correct)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    assert got["format_adherence"] == sum(adherent) / len(rows)
    assert got["n"] == len(rows)


def test_metrics_from_recorded_source_for_a_model_without_confidence_tags():
    rows = _rows("math-500")
    model = "RLVR-Classifier"  # confidence from a separate classifier: no tag to parse
    records = read_model_records(f"rlcr:math-500:{model}")
    assert all(r.confidence is None for r in records)
    assert metrics.format_adherence([math.nan] * len(records)) == 0.0
    recorded = read_model_records(f"rlcr:math-500:{model}:recorded")
    conf = [r.confidence for r in recorded]
    correct = [int(r.correct) for r in recorded]
    expected = _first_principles(conf, correct)
    assert metrics.ece(conf, correct) == pytest.approx(expected["ece"], abs=1e-12)
    assert metrics.auroc(conf, correct) == pytest.approx(expected["auroc"], abs=1e-12)
    assert [r[f"{model}-evals"][0] for r in rows] == correct


def test_ece_bin_edges():
    # 0.7 belongs to [0.7, 0.8); 0.3 to [0.3, 0.4) despite 0.3 * 10 = 2.9999999999999996; 1.0 to the last bin.
    assert metrics.bin_index([0.0, 0.05, 0.3, 0.7, 0.6999, 0.9, 0.95, 1.0]).tolist() == [0, 0, 3, 7, 6, 9, 9, 9]
    # One sample per bin, all correct: ECE is the mean gap to 1.
    assert metrics.ece([0.7, 1.0], [1, 1]) == pytest.approx((0.3 + 0.0) / 2)


def test_auroc_ties_and_degenerate_cases():
    assert metrics.auroc([0.5, 0.5, 0.5], [1, 0, 1]) == 0.5
    assert metrics.auroc([0.9, 0.1], [1, 0]) == 1.0
    assert metrics.auroc([0.1, 0.9], [1, 0]) == 0.0
    assert math.isnan(metrics.auroc([0.9, 0.8], [1, 1]))
    # Missing confidences are left out of calibration metrics, counted by format adherence.
    assert metrics.brier([1.0, math.nan], [1, 0]) == 0.0
    assert metrics.format_adherence([1.0, math.nan]) == 0.5


@pytest.mark.parametrize("name,slm,llm", [("math-500", "RLCR", "Base"), ("commonsenseqa", "Base", "RLCR")])
def test_offline_cascade_matches_a_loop(name, slm, llm):
    rows = _rows(name)
    cols = columns(join(read_model_records(f"rlcr:{name}:{slm}"), read_model_records(f"rlcr:{name}:{llm}")),
                   metrics.Prices(slm=0.2, llm=3.0))
    for threshold in (0.0, 0.55, 0.7, 0.9, 1.0):
        right = deferred = cost = llm_cost = llm_right = 0.0
        for r in rows:
            c = r[f"{slm}-confidence_levels"][0]
            defer = c < threshold
            deferred += defer
            right += r[f"{llm}-evals"][0] if defer else r[f"{slm}-evals"][0]
            cost += r[f"{slm}-c_lengths"][0] * 0.2 + (r[f"{llm}-c_lengths"][0] * 3.0 if defer else 0.0)
            llm_cost += r[f"{llm}-c_lengths"][0] * 3.0
            llm_right += r[f"{llm}-evals"][0]
        n = len(rows)
        out = metrics.simulate_cascade(cols.slm_correct, cols.slm_confidence, cols.slm_cost,
                                       cols.llm_correct, cols.llm_cost, threshold)
        assert out.deferral_rate == pytest.approx(deferred / n)
        assert out.accuracy == pytest.approx(right / n)
        assert out.cost == pytest.approx(cost / n)
        assert out.llm_only_cost == pytest.approx(llm_cost / n)
        assert out.cost_reduction == pytest.approx(1 - cost / llm_cost)
        assert out.accuracy_drop == pytest.approx(llm_right / n - right / n)


def test_threshold_sweep_runs_from_no_deferral_to_all():
    conf = np.array([0.5, 0.7, 0.7, math.nan])
    sweep = metrics.threshold_sweep([1, 0, 1, 0], conf, [10] * 4, [1, 1, 1, 1], [20] * 4)
    assert [o.deferral_rate for o in sweep] == [0.25, 0.5, 1.0]
    assert sweep[-1].accuracy == 1.0 and sweep[-1].accuracy_drop == 0.0
