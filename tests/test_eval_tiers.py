"""N tiers offline on the recorded 7B outputs (one model size: the variants differ in accuracy and
confidence, prices per tier make them a cascade): the simulation, the CLI and the joint fit against
a computation by hand."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from corea_engine.evaluation.ntier import fit, frontier, simulate, sweep, tier_columns
from corea_engine.evaluation.records import read_model_records
from corea_engine.policy import Policy, TierPolicy, route_weights, weights_grid

SPECS = ["rlcr:math-500:Answer-Prob", "rlcr:math-500:RLCR", "rlcr:math-500:Base"]
PRICES = [1.0, 3.0, 10.0]
THRESHOLDS = (0.99, 0.6)


def by_hand(thresholds):
    """Walk every question down the tiers with plain loops: (accuracy, mean cost, answers per tier)."""
    tiers = [read_model_records(spec) for spec in SPECS]
    right = cost = 0.0
    answered = [0, 0, 0]
    for rows in zip(*tiers):
        assert len({r.id for r in rows}) == 1
        for k, r in enumerate(rows):
            cost += r.tokens * PRICES[k]  # every tier the question reaches is paid
            last = k == len(rows) - 1
            if last or (r.confidence is not None and r.confidence >= thresholds[k]):
                right += r.correct
                answered[k] += 1
                break
    n = len(tiers[0])
    return right / n, cost / n, [a / n for a in answered]


def test_offline_three_tiers_equal_a_computation_by_hand(tmp_path):
    cols = tier_columns(SPECS, PRICES)
    accuracy, cost, shares = by_hand(THRESHOLDS)
    o = simulate(cols, THRESHOLDS)
    assert o.accuracy == pytest.approx(accuracy) and o.cost == pytest.approx(cost)
    assert o.share == pytest.approx(shares) and 0 < shares[1] and 0 < shares[2]  # every tier answers some
    assert o.cost_fraction == pytest.approx(cost / np.mean([r.tokens * 10.0 for r in read_model_records(SPECS[2])]))
    # the CLI writes the same figures
    out = subprocess.run([sys.executable, "-m", "corea_engine.cli", "eval", "--offline", *sum((["--tier-records", s] for s in SPECS), []),
                          "--tier-prices", "1,3,10", "--thresholds", "0.99,0.6", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["cascade"]["accuracy"] == pytest.approx(accuracy) and metrics["cascade"]["cost"] == pytest.approx(cost)
    assert [t["name"] for t in metrics["tiers"]] == ["Answer-Prob", "RLCR", "Base"]


def test_route_weights_split_ties_and_missing_confidences_per_tier():
    conf = np.array([[0.5, 0.9], [0.7, 0.6], [math.nan, 0.6], [0.9, math.nan]])
    w = route_weights(conf, [TierPolicy(0.7, 0.5), TierPolicy(0.6)])
    # row 0: tier 0 defers, tier 1 accepts; row 1: a tie at tier 0 (half), else tier 1 at its tie (q = 0: accepts);
    # row 2: no confidence defers, tier 1 accepts; row 3: tier 0 accepts
    assert w.tolist() == [[0, 1, 0], [0.5, 0.5, 0], [0, 1, 0], [1, 0, 0]]
    assert np.allclose(w.sum(axis=1), 1)


def test_the_threshold_grid_is_the_policy_at_each_threshold():
    conf = np.array([0.5, 0.7, 0.7 + 5e-10, math.nan, 0.9])
    thresholds = [0.5, 0.7, 0.95]
    grid = weights_grid(conf, thresholds, 0.25)
    assert grid.shape == (5, 3)
    for j, t in enumerate(thresholds):
        assert grid[:, j].tolist() == Policy(t, 0.25).weights(conf).tolist()
    assert grid[:, 1].tolist() == [1, 0.25, 0.25, 1, 0]


def test_a_verdict_at_the_tie_says_so_on_either_side_of_the_threshold():
    just_below = TierPolicy(0.5).judge(0.5 - 5e-10, 0.3)
    assert not just_below.defers and "at threshold 0.5" in just_below.reason and "<" not in just_below.reason
    assert TierPolicy(0.5, 0.5).judge(0.5 + 5e-10, 0.3).defers
    assert "< threshold" in TierPolicy(0.5).judge(0.49, 0.3).reason


def test_the_frontier_and_the_joint_fit_on_a_held_out_half():
    cols = tier_columns(SPECS, PRICES)
    accuracy, fraction, tuples = sweep(cols)  # vectorised: the same figures as simulate() point by point
    for i in np.random.default_rng(1).integers(0, len(tuples), 25):
        o = simulate(cols, tuples[i])
        assert (o.accuracy, o.cost_fraction) == (pytest.approx(accuracy[i]), pytest.approx(fraction[i]))
    points = frontier(cols)
    assert all(b.cost > a.cost and b.accuracy > a.accuracy for a, b in zip(points, points[1:]))  # Pareto, cheapest first
    grid_best = max(p.accuracy for p in points)
    assert points[-1].accuracy == grid_best
    order = np.random.default_rng(0).permutation(len(cols))
    calib, held = cols.subset(np.sort(order[250:])), cols.subset(np.sort(order[:250]))
    result = fit(calib, cost_budget=0.5, holdout=held, bootstrap=100)
    assert result.calibration["cost_fraction"] <= 0.5
    # exhaustive on the calibration half: no tuple of its confidences within the budget is more accurate
    for p in frontier(calib):
        if p.cost_fraction <= 0.5:
            assert p.accuracy <= result.calibration["accuracy"] + 1e-12
    assert result.holdout["n"] == 250 and "target_met" in result.holdout
    assert simulate(held, result.thresholds).accuracy == pytest.approx(result.holdout["accuracy"])
