"""The deferral policy is one function (corea_engine/policy.py): the decisions a Cascade serves with the
real SLM are the ones offline evaluation (evaluation.calibration.evaluate_policy) makes from the same
confidences and tie draws, request by request and in the aggregate figures."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from cascade_servers import SMALL
from corea_engine.cascade import Cascade, CascadeConfig, SolveRequest
from corea_engine.evaluation.calibration import evaluate_policy
from corea_engine.evaluation.calibrators import Calibrator
from corea_engine.evaluation.records import Columns
from corea_engine.policy import Policy, tie_draw

SEED, TIE_DEFER_PROB = 11, 0.5
# Below, at and above the one calibrated confidence (0.5) every answer gets.
THRESHOLDS = [0.3] * 2 + [0.5] * 6 + [0.7] * 2


def test_served_decisions_equal_offline_evaluation(slm_executor, gsm8k_questions, tmp_path):
    path = tmp_path / "cal.json"
    Calibrator((0.0, 1.0), (0.5, 0.5), model=slm_executor.model_name, contract="json").save(path)
    # No LLM: the decision is made and reported (deferred, degraded) without an LLM run to pay for.
    cascade = Cascade(slm_executor, None, CascadeConfig(**SMALL, calibrator=str(path), tie_defer_prob=TIE_DEFER_PROB,
                                                        tie_seed=SEED))
    ids = [f"policy-{i}" for i in range(len(THRESHOLDS))]
    tied = [tie_draw(SEED, i) for i, t in zip(ids, THRESHOLDS) if t == 0.5]
    assert min(tied) < TIE_DEFER_PROB < max(tied)  # the tied requests go both ways (fixed by their ids)

    async def serve():
        return await asyncio.gather(*(cascade.solve(SolveRequest(gsm8k_questions[0], request_id=i, threshold=t))
                                      for i, t in zip(ids, THRESHOLDS)))

    results = asyncio.run(serve())
    for r in results:
        assert r.confidence_calibrated == pytest.approx(0.5) and "unusable" not in r.deferral_reason, r
    for threshold in sorted(set(THRESHOLDS)):
        group = [r for r in results if r.threshold == threshold]
        conf = np.array([r.confidence_calibrated for r in group])
        draws = np.array([tie_draw(SEED, r.request_id) for r in group])  # recomputed from the log
        policy = Policy(threshold, TIE_DEFER_PROB)
        served = np.array([r.deferred for r in group])
        assert np.array_equal(policy.decide(conf, draws), served), threshold
        cols = Columns(np.zeros(len(group)), conf, np.ones(len(group)), np.ones(len(group)), np.full(len(group), 10.0))
        offline = evaluate_policy(cols, policy, draws=draws, bootstrap=0)
        assert offline.realised["deferral_rate"] == served.mean(), threshold
    assert [r.deferred for r in results if r.threshold != 0.5] == [False, False, True, True]  # above / below
    assert {r.deferred for r in results if r.threshold == 0.5} == {False, True}  # the tie, by each draw
