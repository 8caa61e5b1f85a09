"""The deferral decision, in one place: serving (cascade.py), offline evaluation and calibration.

A policy is a pair (threshold t, tie probability q) applied to a (possibly calibrated) confidence:

    confidence >  t  -> accept the SLM's answer
    confidence == t  -> defer with probability q   (q = 0: accept, the plain policy)
    confidence <  t  -> defer (a missing confidence always defers)

A server draws u uniform in [0, 1) per request from a hash of (seed, request id), so a request's
fate is reproducible and can be logged; a tied request defers when u < q.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

EDGE_TOLERANCE = 1e-9  # confidences this close to the threshold are at the tie


@dataclass(frozen=True)
class Policy:
    threshold: float
    tie_defer_prob: float = 0.0

    def weights(self, confidence) -> np.ndarray:
        """Expected deferral (0, 1 or q) of each sample; NaN confidence = none stated (defers).
        The threshold may be an array broadcast against the confidences (see `weights_grid`)."""
        conf = np.asarray(confidence, dtype=float)
        below = np.where(np.isnan(conf) | (conf < self.threshold), 1.0, 0.0)
        return np.where(np.isclose(conf, self.threshold, rtol=0, atol=EDGE_TOLERANCE), self.tie_defer_prob, below)

    def decide(self, confidence, uniform) -> np.ndarray:
        """Realised deferrals (bool) given one uniform draw in [0, 1) per sample."""
        return self.weights(confidence) > np.asarray(uniform, dtype=float)

    def defers(self, confidence: float | None, uniform: float) -> bool:
        """One request's decision (the served form of `decide`)."""
        conf = math.nan if confidence is None else confidence
        return bool(self.decide(np.array([conf]), np.array([uniform]))[0])

    def at_tie(self, confidence: float | None) -> bool:
        return confidence is not None and abs(confidence - self.threshold) <= EDGE_TOLERANCE


def weights_grid(confidence, thresholds, tie_defer_prob: float = 0.0) -> np.ndarray:
    """Policy(t, tie_defer_prob).weights(confidence) for every t at once: shape (n, len(thresholds))."""
    grid = Policy(np.asarray(thresholds, dtype=float)[None, :], tie_defer_prob)
    return grid.weights(np.asarray(confidence, dtype=float)[:, None])


def tie_draw(seed: int, request_id: str) -> float:
    """The request's uniform draw in [0, 1): a hash of (seed, request id), reproducible from the log."""
    digest = hashlib.sha256(f"{seed}:{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


# ------------------------------------------------------------------------------ N tiers
# An ordered list of tiers: every tier but the last answers with a confidence and passes the
# question on when its policy defers. The same rule serves one request (`TierPolicy.judge`) and
# a whole record set offline (`route_weights`).


@dataclass(frozen=True)
class Verdict:
    """One tier's decision on one request: defers, the confidence it read (after the calibrator),
    the calibrated value (None without a calibrator), the tie draw, and why, in words."""

    defers: bool
    used: float | None
    calibrated: float | None
    draw: float
    reason: str


@dataclass(frozen=True)
class TierPolicy:
    """A tier's rule: its calibrator (optional, any object with apply(confidence)) then
    Policy(threshold, tie_defer_prob)."""

    threshold: float
    tie_defer_prob: float = 0.0
    calibrator: object | None = None

    @property
    def policy(self) -> Policy:
        return Policy(self.threshold, self.tie_defer_prob)

    def calibrate(self, confidence):
        """The confidence the threshold is compared with (array or scalar; NaN / None stays missing)."""
        if self.calibrator is None or confidence is None:
            return confidence
        return self.calibrator.apply(confidence)

    def judge(self, confidence: float | None, draw: float, source: str = "expected") -> Verdict:
        """The decision on one stated confidence (None: none stated, which defers)."""
        if confidence is None:
            return Verdict(True, None, None, draw, "no confidence was read")
        used = float(self.calibrate(confidence))
        calibrated = None if self.calibrator is None else used
        defers = self.policy.defers(used, draw)
        name = f"{source} confidence {confidence:.3f}" + ("" if calibrated is None else f" (calibrated {used:.3f})")
        if self.policy.at_tie(used):  # within EDGE_TOLERANCE either side: the tie rule decided
            reason = f"{name} at threshold {self.threshold:g}: draw {draw:.4f} vs tie_defer_prob {self.tie_defer_prob:g}"
        else:
            reason = f"{name} {'<' if used < self.threshold else '>='} threshold {self.threshold:g}"
        return Verdict(defers, used, calibrated, draw, reason)


def tier_draw(seed: int, request_id: str, tier: int) -> float:
    """Tier `tier`'s tie draw for a request; tier 0 keeps the two-tier draw (tie_draw)."""
    return tie_draw(seed, request_id if tier == 0 else f"{request_id}#{tier}")


def route_weights(confidences, policies: list[TierPolicy]) -> np.ndarray:
    """P(tier k answers) per sample, shape (n, len(policies) + 1), rows summing to 1.

    confidences: (n, N-1) stated confidences of every tier but the last (NaN: none stated, defers);
    policies: one per such tier. A tier answers when every earlier tier deferred and it does not;
    the last tier answers what reaches it. Ties defer with each policy's probability, independently
    per tier (each tier has its own draw: tier_draw)."""
    conf = np.asarray(confidences, dtype=float)
    if conf.ndim != 2 or conf.shape[1] != len(policies):
        raise ValueError(f"confidences must be (n, {len(policies)}), got {conf.shape}")
    reach = np.ones(conf.shape[0])
    out = np.zeros((conf.shape[0], len(policies) + 1))
    for k, tier in enumerate(policies):
        defer = tier.policy.weights(tier.calibrate(conf[:, k]))
        out[:, k] = reach * (1.0 - defer)
        reach = reach * defer
    out[:, -1] = reach
    return out
