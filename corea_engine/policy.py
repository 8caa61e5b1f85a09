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
        """Expected deferral (0, 1 or q) of each sample; NaN confidence = none stated (defers)."""
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


def tie_draw(seed: int, request_id: str) -> float:
    """The request's uniform draw in [0, 1): a hash of (seed, request id), reproducible from the log."""
    digest = hashlib.sha256(f"{seed}:{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64
