"""Choosing the deferral threshold from a calibration set.

The runtime accepts the SLM's answer when confidence >= threshold. Verbalized confidences take few
distinct values (RLCR's are mostly 0.5, 0.6, 0.7, ...), so plain thresholds reach only a few
deferral rates: moving the threshold past 0.6 defers 38% of the questions at once. To hit a
target as closely as the data allows, a policy is a pair (threshold t, tie probability q):

    confidence >  t  -> accept
    confidence == t  -> defer with probability q   (q = 0 is the plain runtime policy)
    confidence <  t  -> defer (a missing confidence always defers)

A server applies q by drawing u uniform in [0, 1) per request (a hash of the request id makes it
reproducible) and deferring a tied request when u < q; equivalently, it uses threshold t with
probability 1 - q and the next larger confidence value with probability q. Every result also
carries the nearest plain policy (q = 0) for servers that do not randomise.

Ordered from deferring nothing to deferring everything, the policies form a path: segment j is
(v_j, q) for q in [0, 1] over the distinct confidences v_1 < ... < v_k, and (v_j, 1) is the same
policy as (v_{j+1}, 0). Along a segment every expected metric (deferral rate, accuracy, cost) is
linear in q, so each target is solved exactly on the segment where it is met.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .metrics import CascadeOutcome, cascade_from_weights
from ..policy import Policy  # the decision's one home; re-exported here
from .records import Columns

TARGETS = ("deferral_rate", "max_accuracy_drop", "cost_budget")


class CalibrationError(ValueError):
    """A target that the calibration data cannot meet, or data that cannot calibrate."""


@dataclass(frozen=True)
class Target:
    kind: str  # one of TARGETS
    value: float  # deferral rate in [0, 1]; accuracy drop in points; cost as a fraction of LLM-only

    def __post_init__(self):
        if self.kind not in TARGETS:
            raise CalibrationError(f"unknown target {self.kind!r}; choose one of: {', '.join(TARGETS)}")
        if not math.isfinite(self.value) or self.value < 0 or (self.kind == "deferral_rate" and self.value > 1):
            raise CalibrationError(f"target {self.kind} = {self.value} is out of range")


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


# ---------------------------------------------------------------------------------------------
# the policy path


def _levels(confidence) -> list[float]:
    conf = np.asarray(confidence, dtype=float)
    levels = sorted(set(np.round(conf[~np.isnan(conf)], 9).tolist()))
    if not levels:
        raise CalibrationError("no sample in the calibration set stated a confidence")
    return levels


def _outcome(cols: Columns, policy: Policy, weights=None) -> CascadeOutcome:
    w = policy.weights(cols.slm_confidence) if weights is None else weights
    return cascade_from_weights(w, cols.slm_correct, cols.slm_cost, cols.llm_correct, cols.llm_cost,
                                policy.threshold, policy.tie_defer_prob)


def _segments(cols: Columns):
    """(level, outcome at q=0, outcome at q=1) for each distinct confidence, least deferral first."""
    for level in _levels(cols.slm_confidence):
        yield level, _outcome(cols, Policy(level, 0.0)), _outcome(cols, Policy(level, 1.0))


def _fraction(start: float, end: float, goal: float) -> float:
    """q in [0, 1] where start + q (end - start) = goal."""
    return 0.0 if end == start else min(1.0, max(0.0, (goal - start) / (end - start)))


def solve(cols: Columns, target: Target) -> Policy:
    """The policy that meets the target on these samples (expected values, exact on the path).

    (v_j, 1) is returned as the same policy (v_{j+1}, 0) when there is a next level."""
    policy = _solve(cols, target)
    levels = _levels(cols.slm_confidence)
    i = levels.index(round(policy.threshold, 9))
    if policy.tie_defer_prob >= 1.0 and i + 1 < len(levels):
        return Policy(levels[i + 1], 0.0)
    return policy


def _solve(cols: Columns, target: Target) -> Policy:
    segments = list(_segments(cols))
    if target.kind == "deferral_rate":
        for level, start, end in segments:
            if target.value <= end.deferral_rate + 1e-12:
                return Policy(level, _fraction(start.deferral_rate, end.deferral_rate, target.value))
        return Policy(segments[-1][0], 1.0)
    if target.kind == "max_accuracy_drop":
        # Cost rises along the path, so the first point that is accurate enough saves the most.
        floor = segments[0][1].llm_accuracy - target.value / 100.0
        for level, start, end in segments:
            if start.accuracy >= floor - 1e-12:
                return Policy(level, 0.0)
            if end.accuracy >= floor - 1e-12:
                return Policy(level, _fraction(start.accuracy, end.accuracy, floor))
        return Policy(segments[-1][0], 1.0)
    # cost budget: the most accurate point whose cost is within budget (cost rises along the path)
    budget = target.value * segments[0][1].llm_only_cost
    if segments[0][1].cost > budget + 1e-12:
        raise CalibrationError(
            f"cost budget {target.value:.3f} x LLM-only is below the cheapest cascade "
            f"({segments[0][1].cost / segments[0][1].llm_only_cost:.3f} x LLM-only)")
    best, best_accuracy = None, -math.inf
    for level, start, end in segments:
        if start.cost > budget + 1e-12:
            break
        q_max = 1.0 if end.cost <= budget + 1e-12 else _fraction(start.cost, end.cost, budget)
        for q in (0.0, q_max):
            accuracy = start.accuracy + q * (end.accuracy - start.accuracy)
            if accuracy > best_accuracy + 1e-12:
                best, best_accuracy = Policy(level, q), accuracy
    return best


def plain_policy(cols: Columns, policy: Policy, target: Target) -> Policy:
    """The nearest policy with q = 0 (what a server without randomisation runs).

    Deferral target: the nearer of the two ends of the tie group. Accuracy target: the end that
    defers more (keeps the accuracy promise). Cost budget: the end that defers less (keeps the
    budget). The end (v_j, 1) is written as (v_{j+1}, 0); past the largest confidence it stays
    (v_k, 1): defer everything, i.e. run the LLM alone.
    """
    if policy.tie_defer_prob == 0.0:
        return policy
    levels = _levels(cols.slm_confidence)
    i = levels.index(round(policy.threshold, 9))
    lower = Policy(policy.threshold, 0.0)
    upper = Policy(levels[i + 1], 0.0) if i + 1 < len(levels) else Policy(policy.threshold, 1.0)
    if policy.tie_defer_prob == 1.0:
        return upper
    if target.kind == "max_accuracy_drop":
        return upper
    if target.kind == "cost_budget":
        return lower
    below = _outcome(cols, lower).deferral_rate
    above = _outcome(cols, upper).deferral_rate
    return lower if abs(below - target.value) <= abs(above - target.value) else upper


# ---------------------------------------------------------------------------------------------
# calibrate and check


@dataclass
class Evaluation:
    """A policy's figures on one set: expected (tie weights), realised (tie draws) and intervals."""

    n: int
    expected: dict
    realised: dict
    bootstrap_95: dict = field(default_factory=dict)  # metric -> [low, high]
    deferral_wilson_95: tuple[float, float] | None = None  # of the realised deferral rate


@dataclass
class CalibrationResult:
    target: dict
    policy: Policy
    plain_policy: Policy
    calibration: Evaluation
    plain_calibration: dict
    holdout: Evaluation | None = None
    # Deferral targets: is the target inside the held-out rate's 95% Wilson interval (held-out
    # sampling only), and inside the 95% interval that also counts the calibration half's
    # sampling (target +- z sqrt(p (1 - p) (1/n_cal + 1/n_held)))? See `holdout_check`.
    target_in_holdout_interval: bool | None = None
    two_sample_interval_95: tuple[float, float] | None = None
    target_in_two_sample_interval: bool | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


_BOOTSTRAP_METRICS = ("deferral_rate", "accuracy", "cost", "cost_reduction", "accuracy_drop")


def evaluate_policy(cols: Columns, policy: Policy, *, seed: int = 0, bootstrap: int = 1000,
                    draws=None) -> Evaluation:
    """The policy's expected and realised figures on `cols`. draws: each sample's uniform draw in
    [0, 1) for the tie rule (a served log's tie_draw, to replay its decisions), else drawn from seed."""
    rng = np.random.default_rng(seed)
    expected = _outcome(cols, policy)
    uniform = rng.random(len(cols)) if draws is None else np.asarray(draws, dtype=float)
    decided = policy.decide(cols.slm_confidence, uniform).astype(float)
    realised = _outcome(cols, policy, weights=decided)
    intervals = {}
    if bootstrap:
        weights = policy.weights(cols.slm_confidence)
        draws = {m: [] for m in _BOOTSTRAP_METRICS}
        for _ in range(bootstrap):
            pick = rng.integers(0, len(cols), len(cols))
            sample = cols.subset(pick)
            outcome = cascade_from_weights(weights[pick], sample.slm_correct, sample.slm_cost,
                                           sample.llm_correct, sample.llm_cost)
            for m in _BOOTSTRAP_METRICS:
                draws[m].append(getattr(outcome, m))
        intervals = {m: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for m, v in draws.items()}
    deferred = int(decided.sum())
    return Evaluation(len(cols), expected.as_dict(), realised.as_dict(), intervals, wilson_interval(deferred, len(cols)))


def split(n: int, holdout_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random calibration / held-out split of n samples."""
    if not 0.0 <= holdout_fraction < 1.0:
        raise CalibrationError(f"holdout fraction must be in [0, 1), got {holdout_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_holdout = int(round(n * holdout_fraction))
    return np.sort(order[n_holdout:]), np.sort(order[:n_holdout])


def calibrate(cols: Columns, target: Target, *, holdout: Columns | None = None,
              seed: int = 0, bootstrap: int = 1000) -> CalibrationResult:
    """Choose the policy on `cols` for the target; check it on `holdout` when given."""
    if not cols.has_llm:
        raise CalibrationError("calibration needs the LLM's correctness and tokens on every sample")
    if len(cols) < 2:
        raise CalibrationError(f"calibration needs at least 2 samples, got {len(cols)}")
    policy = solve(cols, target)
    plain = plain_policy(cols, policy, target)
    result = CalibrationResult(
        target=asdict(target), policy=policy, plain_policy=plain,
        calibration=evaluate_policy(cols, policy, seed=seed, bootstrap=bootstrap),
        plain_calibration=_outcome(cols, plain).as_dict(),
    )
    achieved = result.calibration.expected["deferral_rate"]
    if target.kind == "deferral_rate" and abs(achieved - target.value) > 1e-9:
        result.notes.append(f"target deferral {target.value:.3f} is not reachable: the missing confidences "
                            f"alone defer {achieved:.3f}" if achieved > target.value else
                            f"closest reachable deferral is {achieved:.3f}")
    if holdout is not None and len(holdout):
        result.holdout = evaluate_policy(holdout, policy, seed=seed + 1, bootstrap=bootstrap)
        if target.kind == "deferral_rate":
            low, high = result.holdout.deferral_wilson_95
            result.target_in_holdout_interval = bool(low <= target.value <= high)
            p, z = target.value, 1.959963984540054
            half = z * math.sqrt(p * (1 - p) * (1 / len(cols) + 1 / len(holdout)))
            result.two_sample_interval_95 = (max(0.0, p - half), min(1.0, p + half))
            observed = result.holdout.realised["deferral_rate"]
            result.target_in_two_sample_interval = bool(abs(observed - p) <= half + 1e-12)
    return result
