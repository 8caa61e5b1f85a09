"""Fitted calibrators and the tie rule, offline and served: one policy (corea_engine/policy.py).

Offline: calibrators fitted on half of the recorded 7B outputs (RLCR on MATH-500). Served: the
real SmolLM2 cascade over gRPC with a stand-in LLM; each response's decision is recomputed with
the offline policy from the confidence and draw the response carries.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import grpc
import numpy as np
import pytest

from cascade_servers import corea_server, llm_server, stand_in_llm
from corea_engine.evaluation.calibration import split, wilson_interval
from corea_engine.evaluation.calibrators import KINDS, Calibrator
from corea_engine.evaluation.metrics import auroc, ece
from corea_engine.evaluation.records import read_model_records
from corea_engine.policy import Policy, tie_draw
from corea_engine.protos import corea_pb2, corea_pb2_grpc


@pytest.mark.parametrize("kind", KINDS)
def test_fitted_on_one_half_held_out_ece_falls_and_auroc_holds(kind):
    records = read_model_records("rlcr:math-500:RLCR")
    conf = np.array([math.nan if r.confidence is None else r.confidence for r in records])
    correct = np.array([float(r.correct) for r in records])
    fit, held = split(len(records), 0.5, 0)
    cal = Calibrator.fit(conf[fit], correct[fit], kind=kind)
    raw, after = conf[held], cal.apply(conf[held])
    assert ece(after, correct[held]) < ece(raw, correct[held]) - 0.03
    stated = ~np.isnan(raw)
    order = np.argsort(raw[stated], kind="stable")
    assert np.all(np.diff(after[stated][order]) >= -1e-12)  # monotone: never reverses an order
    if kind in ("isotonic", "histogram"):  # pooling (and binning) may tie levels, which costs AUROC a little
        assert auroc(after, correct[held]) >= auroc(raw, correct[held]) - 0.02
    else:
        assert auroc(after, correct[held]) >= auroc(raw, correct[held]) - 1e-9


def test_tie_rule_defers_with_the_configured_probability():
    policy, n = Policy(0.6, 0.3), 20000
    draws = np.array([tie_draw(7, f"req-{i}") for i in range(n)])
    deferred = int(policy.decide(np.full(n, 0.6), draws).sum())
    low, high = wilson_interval(deferred, n, z=3.29)  # 99.9%
    assert low <= 0.3 <= high, (deferred, n)
    assert policy.defers(0.59, 0.99) and not policy.defers(0.61, 0.0) and policy.defers(None, 0.99)


def _write(path, cal: Calibrator) -> str:
    cal.save(path)
    return str(path)


@pytest.mark.parametrize("case,message", [
    ("missing", "calibrator: cannot read {path}: "),
    ("malformed", "knots must be non-decreasing with y in [0, 1]"),
    ("other_file", "not a corea.calibrator/1 calibrator"),
    ("model", "fitted for model 'another-7b'"),
    ("contract", "fitted for contract 'tags'"),
    ("source", "fitted for confidence source 'sampled'"),
])
def test_serve_refuses_a_wrong_calibrator_at_start_up(tmp_path, case, message):
    path = tmp_path / "cal.json"
    if case == "malformed":
        path.write_text(json.dumps({"format": "corea.calibrator/1", "kind": "isotonic", "x": [0.5], "y": [2.0]}))
    elif case == "other_file":
        path.write_text(json.dumps({"threshold": 0.6, "tie_defer_prob": 0.2}))
    elif case != "missing":
        meta = {"model": {"model": "another-7b"}, "contract": {"contract": "tags"}, "source": {"source": "sampled"}}[case]
        _write(path, Calibrator((0.0, 1.0), (0.1, 0.9), **meta))
    done = subprocess.run([sys.executable, "-m", "corea_engine.cli", "serve", "--mode", "slm_only", "--no-metrics",
                           "--contract", "json", "--calibrator", str(path)],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and message.format(path=path) in lines[-1], done.stderr


@pytest.fixture(scope="module")
def llm(slm_executor):
    executor = stand_in_llm(slm_executor)
    server = llm_server(executor)
    yield server
    server.close()
    executor.close()


def _serve(slm_executor, llm, tmp_path_factory, cal: Calibrator, **config):
    path = _write(tmp_path_factory.mktemp("cal") / "cal.json", cal)
    return corea_server(slm_executor, llm.address, calibrator=path, **config)


def _solve(server, question: str, n: int, **fields):
    with grpc.insecure_channel(server.address) as channel:
        stub = corea_pb2_grpc.CoreaStub(channel)
        futures = [stub.Solve.future(corea_pb2.SolveRequest(question=question, request_id=f"q-{i}", **fields), timeout=600)
                   for i in range(n)]
        return [f.result() for f in futures]


def test_served_calibrator_decides_as_the_offline_policy(slm_executor, llm, tmp_path_factory, gsm8k_questions):
    # A map that lifts every confidence to 0.95 (served over 0.9): accepted where the raw one defers.
    cal = Calibrator((0.0, 1.0), (0.95, 0.95), model=slm_executor.model_name, contract="json")
    server = _serve(slm_executor, llm, tmp_path_factory, cal, threshold=0.9)
    try:
        responses = [_solve(server, q, 1)[0] for q in gsm8k_questions[:3]]
    finally:
        server.close()
    flipped = 0
    for r in responses:
        assert r.HasField("confidence_calibrated") and r.HasField("tie_draw")
        assert r.confidence_calibrated == pytest.approx(float(cal.apply(r.confidence_expected)))
        offline = Policy(0.9).defers(r.confidence_calibrated, r.tie_draw)
        assert r.deferred == offline and not r.degraded, r
        flipped += Policy(0.9).defers(r.confidence_expected, r.tie_draw) != offline
    assert flipped >= 1  # the calibrator changed at least one decision (SmolLM2 states less than 0.9)


def test_served_tie_rule_defers_each_request_by_its_draw(slm_executor, llm, tmp_path_factory, gsm8k_questions):
    # Every confidence maps to the threshold: each identical request is at the tie.
    cal = Calibrator((0.0, 1.0), (0.5, 0.5), model=slm_executor.model_name)
    server = _serve(slm_executor, llm, tmp_path_factory, cal, threshold=0.5, tie_defer_prob=0.5, tie_seed=3)
    try:
        responses = _solve(server, gsm8k_questions[0], 24)
    finally:
        server.close()
    for r in responses:
        assert r.tie_draw == pytest.approx(tie_draw(3, r.request_id))
        assert r.deferred == (r.tie_draw < 0.5), r
        assert "draw" in r.deferral_reason or not r.deferred
    deferred = sum(r.deferred for r in responses)
    low, high = wilson_interval(deferred, len(responses), z=3.29)
    assert low <= 0.5 <= high, deferred


def test_calibrate_fit_writes_a_calibrator_the_server_can_load(tmp_path):
    out = tmp_path / "cal.json"
    done = subprocess.run([sys.executable, "-m", "corea_engine.cli", "calibrate", "--fit", "platt", "--slm", "rlcr:math-500:RLCR",
                           "--model", "m", "--contract", "json", "--source", "sampled", "--bootstrap", "50", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    held = json.loads(done.stdout)["holdout"]
    assert held["n"] > 200 and held["calibrated"]["ece"] < held["raw"]["ece"]
    lo, hi = held["calibrated"]["ece_95"]
    assert lo <= held["calibrated"]["ece"] <= hi
    # the spread a threshold acts on: platt is monotone, so it neither creates nor removes all of it
    assert 0 < held["calibrated"]["std"] and 0 < held["raw"]["std"] < 0.5
    cal = Calibrator.load(out)
    assert (cal.kind, cal.model, cal.contract, cal.source) == ("platt", "m", "json", "sampled")
    cal.check_serves(model="m", contract="json", source="sampled")


def test_calibrate_chooses_the_threshold_on_the_calibrated_confidence(tmp_path):
    cal = Calibrator((0.0, 0.5, 1.0), (0.05, 0.15, 0.25))  # every level moves: the threshold must be one of the new ones
    path = _write(tmp_path / "cal.json", cal)
    done = subprocess.run([sys.executable, "-m", "corea_engine.cli", "calibrate", "--slm", "rlcr:math-500:RLCR",
                           "--llm", "rlcr:math-500:Base", "--target-deferral", "0.3", "--bootstrap", "20", "--calibrator", path],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    policy = json.loads(done.stdout)["policy"]
    assert 0.05 <= policy["threshold"] <= 0.25 and 0 <= policy["tie_defer_prob"] <= 1
