"""The deferral curve and RouteLLM's metrics on it (APGR, CPT), with the random-deferral baseline.

The curve is accuracy against the share of questions deferred to the LLM (x in [0, 1]), the runtime
policy (`metrics.threshold_sweep`: accept when confidence >= threshold) swept from deferring nothing
(the SLM alone) to deferring everything (the LLM alone). Between two plain thresholds the tie rule
of calibration.py (defer a tied sample with probability q) moves along a straight line, so the
piecewise-linear curve through the sweep's points is exactly what the policies reach in expectation.

RouteLLM (Ong et al., 2024) measures a router on this curve:

* PGR(x) = (accuracy(x) - SLM accuracy) / (LLM accuracy - SLM accuracy), the performance gap recovered.
* APGR = the area under PGR(x) over x in [0, 1] (exact here: trapezoids on a piecewise-linear curve).
* CPT(p) = the smallest deferral rate at which PGR reaches p (call-performance threshold; p = 0.5, 0.8).

Deferring a random share x of the questions has expected accuracy SLM + x (LLM - SLM): PGR(x) = x,
so the random baseline has APGR 0.5 and CPT(p) = p. Where the LLM is not more accurate than the SLM
there is no gap to recover and every PGR-based figure is None.

RouteLLM reads CPT with np.interp over accuracy, which assumes the curve rises; the first crossing
used here is the same number on a rising curve and stays defined on one that dips.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .metrics import cascade_from_weights, threshold_sweep
from .records import Columns

CPT_LEVELS = (0.5, 0.8)


@dataclass(frozen=True)
class Curve:
    """Points of the deferral curve, deferral rising from 0 (SLM alone) to 1 (LLM alone).

    deferral, accuracy: fractions; cost: mean per question, same unit as the columns' costs;
    threshold: the plain policy at each point (None at the origin, where nothing is deferred)."""

    deferral: tuple[float, ...]
    accuracy: tuple[float, ...]
    cost: tuple[float, ...]
    threshold: tuple[float | None, ...]

    @property
    def slm_accuracy(self) -> float:
        return self.accuracy[0]

    @property
    def llm_accuracy(self) -> float:
        return self.accuracy[-1]

    def as_dict(self) -> dict:
        return {"deferral": list(self.deferral), "accuracy": list(self.accuracy), "cost": list(self.cost),
                "threshold": list(self.threshold)}


def deferral_curve(cols: Columns, confidence=None) -> Curve:
    """The curve of the plain policy over every threshold; `confidence` overrides the columns' one.

    Needs the LLM's correctness on every sample (ValueError otherwise)."""
    if not cols.has_llm:
        raise ValueError("the deferral curve needs the LLM's correctness and cost on every sample")
    conf = cols.slm_confidence if confidence is None else np.asarray(confidence, dtype=float)
    origin = cascade_from_weights(np.zeros(len(cols)), cols.slm_correct, cols.slm_cost, cols.llm_correct, cols.llm_cost)
    sweep = threshold_sweep(cols.slm_correct, conf, cols.slm_cost, cols.llm_correct, cols.llm_cost)
    points = [(origin.deferral_rate, origin.accuracy, origin.cost, None)]
    points += [(o.deferral_rate, o.accuracy, o.cost, o.threshold) for o in sweep]
    return Curve(*(tuple(column) for column in zip(*points)))


def random_curve(slm_accuracy: float, llm_accuracy: float, slm_cost: float, llm_cost: float) -> Curve:
    """The expected curve of deferring a uniformly random share of questions (mean costs per question)."""
    return Curve((0.0, 1.0), (slm_accuracy, llm_accuracy), (slm_cost, slm_cost + llm_cost), (None, None))


def pgr(curve: Curve) -> np.ndarray | None:
    """PGR at each point of the curve; None when the LLM is not more accurate than the SLM."""
    gap = curve.llm_accuracy - curve.slm_accuracy
    if not gap > 1e-12:
        return None
    return (np.asarray(curve.accuracy) - curve.slm_accuracy) / gap


def apgr(curve: Curve) -> float | None:
    """Area under PGR(deferral) over [0, 1]; None when there is no gap to recover."""
    recovered = pgr(curve)
    if recovered is None:
        return None
    x = np.asarray(curve.deferral)
    return float(np.sum((x[1:] - x[:-1]) * (recovered[1:] + recovered[:-1]) / 2))


def cpt(curve: Curve, level: float) -> float | None:
    """The smallest deferral rate at which PGR reaches `level`; None with no gap to recover."""
    recovered = pgr(curve)
    if recovered is None:
        return None
    x = curve.deferral
    if recovered[0] >= level:
        return float(x[0])
    for i in range(1, len(x)):
        if recovered[i] >= level:
            y0, y1 = recovered[i - 1], recovered[i]
            return float(x[i - 1] + (level - y0) / (y1 - y0) * (x[i] - x[i - 1]))
    return None  # pragma: no cover - the curve ends at the LLM alone, PGR 1


def routing_metrics(curve: Curve) -> dict:
    """APGR and CPT at CPT_LEVELS for the curve and for the random baseline with the same end points.

    Keys: gap (LLM - SLM accuracy: PGR divides by it, so a gap of a point or two makes every
    PGR figure noisy), apgr, cpt_50, cpt_80, random_apgr, random_cpt_50, random_cpt_80 (None where no gap)."""
    baseline = random_curve(curve.slm_accuracy, curve.llm_accuracy, curve.cost[0], curve.cost[-1] - curve.cost[0])
    out = {"gap": curve.llm_accuracy - curve.slm_accuracy, "apgr": apgr(curve)}
    out.update({f"cpt_{round(100 * p)}": cpt(curve, p) for p in CPT_LEVELS})
    out["random_apgr"] = apgr(baseline)
    out.update({f"random_cpt_{round(100 * p)}": cpt(baseline, p) for p in CPT_LEVELS})
    return out
