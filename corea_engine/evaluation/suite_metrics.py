"""A suite's figures from its rows (suite_runner.py): the JSON that `corea eval --suite` writes.

1. Fit, on the in-domain rows (all of them, or a seeded share when `holdout` > 0 keeps the rest
   to check in-domain): the deferral policy (calibration.py: a target deferral rate, or a given
   threshold) on the served confidence source, and an isotonic calibrator (calibrators.py).
2. Evaluate, per dataset and pooled per role: accuracy of the SLM alone, the LLM alone and the
   cascade under that policy (expected over the tie rule, plus one seeded draw), deferral, cost and
   cost saved against the LLM alone, the deferral curve with APGR and CPT against the random
   baseline (deferral.py), ECE / AUROC / Brier of the sampled, expected and calibrated confidence,
   and time to decision p50/p90/p99 with SLM tokens per decision for each contract order.
3. Shift: the in-domain promise (deferral, accuracy drop, ECE) against what each out-of-domain set
   and the pooled out-of-domain rows realise.

Every key is always present (None where a figure does not apply, e.g. no expected confidence in
recorded outputs), so two runs' JSON files can be compared key by key. SCHEMA names the layout.
"""

from __future__ import annotations

import math

import numpy as np

from ..bench.stats import percentile
from . import metrics
from .calibration import CalibrationError, Policy, Target, calibrate, evaluate_policy, split
from .calibrators import IsotonicCalibrator
from .deferral import deferral_curve, routing_metrics
from .records import Columns

SCHEMA = "corea.eval_suite/1"
CONFIDENCES = ("sampled", "expected", "calibrated")
ORDERS = ("answer_first", "confidence_first")


def _nan(value) -> float:
    return math.nan if value is None else float(value)


def usable(rows: list[dict]) -> list[dict]:
    """Rows where both tiers' correctness and cost are known (a degraded LLM call leaves them unknown)."""
    return [r for r in rows if r["slm_correct"] is not None and r["llm_correct"] is not None and r["llm_cost"] is not None]


def columns(rows: list[dict], source: str, calibrator: IsotonicCalibrator | None = None) -> Columns:
    """Columns for the metrics with the `source` confidence (sampled | expected | calibrated)."""
    raw = np.array([_nan(r[f"confidence_{calibrator.source if source == 'calibrated' else source}"]) for r in rows],
                   dtype=float)
    conf = calibrator.apply(raw) if source == "calibrated" else raw
    return Columns(np.array([float(r["slm_correct"]) for r in rows]), conf,
                   np.array([float(r["slm_cost"] or 0.0) for r in rows]),
                   np.array([float(r["llm_correct"]) for r in rows]), np.array([float(r["llm_cost"]) for r in rows]))


def _calibration(rows, calibrator, n_bins) -> dict:
    """Per confidence: calibration_summary plus its reliability bins (None when no row states one)."""
    out = {}
    for source in CONFIDENCES:
        cols = columns(rows, source, calibrator)
        if np.isnan(cols.slm_confidence).all():
            out[source] = None
            continue
        out[source] = metrics.calibration_summary(cols.slm_confidence, cols.slm_correct, n_bins)
        out[source]["reliability"] = [vars(b) for b in metrics.reliability_bins(cols.slm_confidence, cols.slm_correct, n_bins)]
    return out


def _decision(rows) -> dict:
    out = {}
    for order in ORDERS:
        taken = [r["decision"][order] for r in rows if r["decision"].get(order)]
        ms = [d["ms"] for d in taken if d["ms"] is not None]
        to_confidence = [d["confidence_ms"] for d in taken if d.get("confidence_ms") is not None]
        tokens = [d["slm_tokens"] for d in taken]
        deferred = [d["deferred"] for d in taken if d.get("deferred") is not None]
        out[order] = None if not taken else {
            "n": len(taken), "p50_ms": percentile(ms, 50), "p90_ms": percentile(ms, 90), "p99_ms": percentile(ms, 99),
            "mean_ms": float(np.mean(ms)) if ms else None, "confidence_p50_ms": percentile(to_confidence, 50),
            "slm_tokens_mean": float(np.mean(tokens)), "slm_tokens_p50": percentile(tokens, 50),
            "deferred_share": float(np.mean(deferred)) if deferred else None}
    return out


def section(rows: list[dict], role: str, policy: Policy, source: str, calibrator, *, seed: int, n_bins: int) -> dict:
    """The figures of one set of rows under the fitted policy."""
    cols = columns(rows, source)
    ev = evaluate_policy(cols, policy, seed=seed, bootstrap=0)  # the runtime rule, with the tie rule
    e = ev.expected
    curve = deferral_curve(cols)
    slm_cost, llm_cost = float(cols.slm_cost.mean()), float(cols.llm_cost.mean())
    return {
        "role": role, "n": len(cols),
        "accuracy": {"slm": e["slm_accuracy"], "llm": e["llm_accuracy"], "cascade": e["accuracy"]},
        "deferral_rate": e["deferral_rate"], "deferral_rate_drawn": ev.realised["deferral_rate"],
        "accuracy_drop": e["accuracy_drop"],
        "cost": {"slm_only": slm_cost, "llm_only": llm_cost, "cascade": e["cost"],
                 "saved": llm_cost - e["cost"], "saved_fraction": e["cost_reduction"]},
        "routing": routing_metrics(curve),
        "curve": curve.as_dict(),
        "calibration": _calibration(rows, calibrator, n_bins),
        "decision": _decision(rows),
    }


def fit(rows: list[dict], source: str, *, target_deferral: float | None, threshold: float | None, seed: int) -> tuple:
    """(policy, calibrator, fit summary) on the in-domain fit rows; CalibrationError when they cannot fit."""
    cols = columns(rows, source)
    if threshold is not None:
        policy, how = Policy(float(threshold), 0.0), "given threshold"
    else:
        policy, how = calibrate(cols, Target("deferral_rate", target_deferral), seed=seed, bootstrap=0).policy, "target deferral"
    try:
        calibrator = IsotonicCalibrator.fit(cols.slm_confidence, cols.slm_correct, source=source, fitted_on="in_domain")
    except ValueError as err:
        raise CalibrationError(str(err)) from None
    intended = evaluate_policy(cols, policy, bootstrap=0).expected
    return policy, calibrator, {
        "n": len(cols), "how": how, "target_deferral": target_deferral,
        "policy": {"threshold": policy.threshold, "tie_defer_prob": policy.tie_defer_prob},
        "intended_deferral": intended["deferral_rate"], "intended_accuracy_drop": intended["accuracy_drop"],
        "calibrator": calibrator.as_dict(),
    }


def _shift(reference: dict, test: dict) -> dict:
    def ece(part, source):
        summary = part["calibration"][source]
        return None if summary is None else summary["ece"]

    out = {"intended_deferral": reference["intended_deferral"], "in_domain_deferral": reference["deferral_rate"],
           "realised_deferral": test["deferral_rate"],
           "deferral_change": test["deferral_rate"] - reference["intended_deferral"],
           "in_domain_accuracy_drop": reference["accuracy_drop"], "accuracy_drop": test["accuracy_drop"],
           "accuracy_drop_change": test["accuracy_drop"] - reference["accuracy_drop"]}
    for source in ("raw", "calibrated"):
        name = reference["source"] if source == "raw" else "calibrated"
        before, after = ece(reference, name), ece(test, name)
        out[f"in_domain_ece_{source}"] = before
        out[f"ece_{source}"] = after
        out[f"ece_change_{source}"] = None if before is None or after is None else after - before
    return out


def analyse(suite, data: dict[str, list[dict]], *, source: str, target_deferral: float | None = 0.3,
            threshold: float | None = None, holdout: float = 0.0, seed: int = 0, n_bins: int = 10) -> dict:
    """The suite's result dict (see the module docstring); raises CalibrationError when the
    in-domain rows cannot fit the policy or the calibrator."""
    # A dataset without rows (a run stopped early) is left out of every figure.
    in_names = [n for n in suite.role("in_domain") if data.get(n)]
    out_names = [n for n in suite.role("out_of_domain") if data.get(n)]
    data = {name: data[name] for name in (*in_names, *out_names)}
    kept = {name: usable(rows) for name, rows in data.items()}
    dropped = {name: len(data[name]) - len(kept[name]) for name in data if len(data[name]) != len(kept[name])}
    pooled_in = [r for name in in_names for r in kept[name]]
    if not pooled_in:
        raise CalibrationError("no in-domain question has both tiers' answers: nothing to fit on")
    fit_index, held_index = split(len(pooled_in), holdout, seed) if holdout > 0 else (np.arange(len(pooled_in)), None)
    held_ids = set() if held_index is None else {pooled_in[i]["id"] for i in held_index}
    policy, calibrator, fitted = fit([pooled_in[i] for i in fit_index], source,
                                     target_deferral=target_deferral, threshold=threshold, seed=seed)

    def evaluated(name):  # an in-domain dataset is checked on its held-out rows when there are some
        rows = kept[name]
        return [r for r in rows if r["id"] in held_ids] if held_ids and name in in_names else rows

    kw = dict(policy=policy, source=source, calibrator=calibrator, seed=seed, n_bins=n_bins)
    datasets = {name: section(evaluated(name), "in_domain" if name in in_names else "out_of_domain", **kw)
                for name in data if evaluated(name)}
    overall = {}
    for role, names in (("in_domain", in_names), ("out_of_domain", out_names)):
        rows = [r for name in names for r in evaluated(name)]
        overall[role] = section(rows, role, **kw) if rows else None
    reference = dict(overall["in_domain"], source=source, intended_deferral=fitted["intended_deferral"])
    shift = {name: _shift(reference, datasets[name]) for name in out_names if name in datasets}
    if overall["out_of_domain"] is not None:
        shift["out_of_domain"] = _shift(reference, overall["out_of_domain"])
    return {
        "schema": SCHEMA, "suite": suite.as_dict(), "confidence_source": source,
        "in_domain_evaluated_on": "held_out" if held_ids else "fit_set",
        "fit": fitted, "datasets": datasets, "overall": overall, "shift": shift,
        "dropped_rows": dropped,
        "datasets_without_rows": [d.name for d in suite.datasets if d.name not in data],
    }
