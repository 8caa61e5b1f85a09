"""Evaluation metrics, shared by `corea eval`, `corea calibrate` and training.

Conventions (every function takes plain sequences or numpy arrays):

* ``correct``: 1/0 (or bool) per sample.
* ``confidence``: a value in [0, 1] per sample, NaN where the model stated none (the output did
  not parse). Calibration metrics (ECE, AUROC, Brier, mean confidence) are taken over the samples
  that stated a confidence; `format_adherence` is the share that did. The cascade treats a missing
  confidence as below every threshold: it defers.
* ECE uses ``n_bins`` equal-width bins. Bin k holds confidences in [k/n, (k+1)/n), left-closed,
  except the last bin, which is closed on both sides so that 1.0 lands in it: with 10 bins, 0.7
  belongs to [0.7, 0.8) and 1.0 to [0.9, 1.0]. A value within 1e-9 of an edge is put on the edge,
  so a confidence written "0.7" is in the bin a reader expects despite binary floating point
  (0.7 * 10 = 7.000000000000001, 0.3 * 10 = 2.9999999999999996).
  ECE = sum over non-empty bins of (bin size / N) * |bin accuracy - bin mean confidence|.
* AUROC: the probability that a random correct sample has a higher confidence than a random
  wrong one, ties counted 1/2 (the Mann-Whitney statistic); NaN when one class is empty.
* Brier: mean of (confidence - correct)^2.
* Cost: each tier's cost per sample, either what a server reported or completion tokens times a
  price per token (`Prices`). The cascade always pays the SLM and pays the LLM on deferred
  samples; "LLM alone" pays the LLM on every sample. Accuracy drop = LLM-alone accuracy - cascade accuracy (a fraction;
  x100 for points).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

EDGE_TOLERANCE = 1e-9


def _arrays(confidence, correct):
    conf = np.asarray(confidence, dtype=float)
    corr = np.asarray(correct, dtype=float)
    if conf.shape != corr.shape or conf.ndim != 1:
        raise ValueError(f"confidence and correct must be 1-d and the same length, got {conf.shape} and {corr.shape}")
    stated = ~np.isnan(conf)
    return conf[stated], corr[stated]


def pass_at_1(correct) -> float:
    corr = np.asarray(correct, dtype=float)
    return float(corr.mean()) if corr.size else math.nan


def format_adherence(confidence) -> float:
    """Share of samples that stated a confidence (parsed under the contract)."""
    conf = np.asarray(confidence, dtype=float)
    return float((~np.isnan(conf)).mean()) if conf.size else math.nan


def mean_confidence(confidence) -> float:
    conf = np.asarray(confidence, dtype=float)
    conf = conf[~np.isnan(conf)]
    return float(conf.mean()) if conf.size else math.nan


def bin_index(confidence, n_bins: int = 10) -> np.ndarray:
    """The ECE bin of each confidence (see the module docstring for the edge convention)."""
    scaled = np.asarray(confidence, dtype=float) * n_bins
    nearest = np.round(scaled)
    scaled = np.where(np.abs(scaled - nearest) < EDGE_TOLERANCE * n_bins, nearest, scaled)
    return np.clip(np.floor(scaled).astype(int), 0, n_bins - 1)


@dataclass(frozen=True)
class ReliabilityBin:
    lower: float
    upper: float
    count: int
    mean_confidence: float  # NaN when empty
    accuracy: float  # NaN when empty


def reliability_bins(confidence, correct, n_bins: int = 10) -> list[ReliabilityBin]:
    conf, corr = _arrays(confidence, correct)
    index = bin_index(conf, n_bins)
    bins = []
    for k in range(n_bins):
        members = index == k
        count = int(members.sum())
        bins.append(ReliabilityBin(
            k / n_bins, (k + 1) / n_bins, count,
            float(conf[members].mean()) if count else math.nan,
            float(corr[members].mean()) if count else math.nan,
        ))
    return bins


def ece(confidence, correct, n_bins: int = 10) -> float:
    bins = reliability_bins(confidence, correct, n_bins)
    total = sum(b.count for b in bins)
    if total == 0:
        return math.nan
    return float(sum(b.count / total * abs(b.accuracy - b.mean_confidence) for b in bins if b.count))


def auroc(confidence, correct) -> float:
    """Mann-Whitney AUROC of confidence for correct vs wrong, ties counted 1/2."""
    conf, corr = _arrays(confidence, correct)
    pos, neg = conf[corr == 1], conf[corr == 0]
    if pos.size == 0 or neg.size == 0:
        return math.nan
    # Average ranks handle ties: a tied pair contributes 1/2.
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    values = np.concatenate([pos, neg])[order]
    ranks = np.empty(values.size)
    start = 0
    while start < values.size:
        end = start
        while end + 1 < values.size and values[end + 1] == values[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    rank_sum = ranks[: pos.size].sum()
    return float((rank_sum - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def brier(confidence, correct) -> float:
    conf, corr = _arrays(confidence, correct)
    return float(np.mean((conf - corr) ** 2)) if conf.size else math.nan


def calibration_summary(confidence, correct, n_bins: int = 10) -> dict:
    """Accuracy and calibration of one model's answers."""
    return {
        "n": int(np.asarray(correct).size),
        "pass@1": pass_at_1(correct),
        "format_adherence": format_adherence(confidence),
        "mean_confidence": mean_confidence(confidence),
        "ece": ece(confidence, correct, n_bins),
        "auroc": auroc(confidence, correct),
        "brier": brier(confidence, correct),
    }


# ---------------------------------------------------------------------------------------------
# Cost and the offline cascade


@dataclass(frozen=True)
class Prices:
    """Price per completion token of each tier, in any unit (default: relative, LLM = 10 x SLM)."""

    slm: float = 1.0
    llm: float = 10.0

    def costs(self, slm_tokens, llm_tokens) -> tuple[np.ndarray, np.ndarray]:
        """Per-sample cost of each tier from completion token counts."""
        return (np.asarray(slm_tokens, dtype=float) * self.slm, np.asarray(llm_tokens, dtype=float) * self.llm)


@dataclass(frozen=True)
class CascadeOutcome:
    threshold: float
    tie_defer_prob: float
    n: int
    accuracy: float
    deferral_rate: float  # LLM%
    cost: float  # mean per sample
    llm_only_cost: float
    cost_reduction: float  # 1 - cost / llm_only_cost
    llm_accuracy: float
    slm_accuracy: float
    accuracy_drop: float  # llm_accuracy - accuracy

    def as_dict(self) -> dict:
        return asdict(self)


def deferral_weights(confidence, threshold: float, tie_defer_prob: float = 0.0) -> np.ndarray:
    """Per-sample probability of deferring under the policy (corea_engine/policy.py)."""
    from ..policy import Policy

    return Policy(threshold, tie_defer_prob).weights(confidence)


def cascade_from_weights(deferred, slm_correct, slm_cost, llm_correct, llm_cost,
                         threshold: float = math.nan, tie_defer_prob: float = 0.0) -> CascadeOutcome:
    """The cascade's expected figures when sample i defers with probability deferred[i].

    slm_cost/llm_cost: what each tier costs on each sample (see `Prices.costs`, or the cost a
    server reported); the SLM is always paid, the LLM on deferred samples only.
    """
    d = np.asarray(deferred, dtype=float)
    slm_c, llm_c = np.asarray(slm_correct, dtype=float), np.asarray(llm_correct, dtype=float)
    slm_cost, llm_cost = np.asarray(slm_cost, dtype=float), np.asarray(llm_cost, dtype=float)
    accuracy = float(np.mean((1 - d) * slm_c + d * llm_c))
    cost = float(np.mean(slm_cost + d * llm_cost))
    llm_only = float(np.mean(llm_cost))
    llm_accuracy = float(llm_c.mean())
    return CascadeOutcome(
        threshold=float(threshold), tie_defer_prob=float(tie_defer_prob), n=int(d.size),
        accuracy=accuracy, deferral_rate=float(d.mean()), cost=cost, llm_only_cost=llm_only,
        cost_reduction=1.0 - cost / llm_only if llm_only > 0 else math.nan,
        llm_accuracy=llm_accuracy, slm_accuracy=float(slm_c.mean()), accuracy_drop=llm_accuracy - accuracy,
    )


def simulate_cascade(slm_correct, slm_confidence, slm_cost, llm_correct, llm_cost, threshold: float,
                     tie_defer_prob: float = 0.0) -> CascadeOutcome:
    """The cascade's expected accuracy, deferral rate and cost at a threshold, from recorded
    per-sample outputs of both tiers (no model runs)."""
    weights = deferral_weights(slm_confidence, threshold, tie_defer_prob)
    return cascade_from_weights(weights, slm_correct, slm_cost, llm_correct, llm_cost, threshold, tie_defer_prob)


def candidate_thresholds(confidence) -> list[float]:
    """Every threshold that gives a different plain policy: each distinct stated confidence,
    plus one above them all (defer everything)."""
    conf = np.asarray(confidence, dtype=float)
    values = sorted(set(np.round(conf[~np.isnan(conf)], 9).tolist()))
    if not values:
        return [0.0]
    return values + [values[-1] + 1e-6]


def threshold_sweep(slm_correct, slm_confidence, slm_cost, llm_correct, llm_cost) -> list[CascadeOutcome]:
    """The plain policy at every candidate threshold, from deferring least to most."""
    return [simulate_cascade(slm_correct, slm_confidence, slm_cost, llm_correct, llm_cost, t)
            for t in candidate_thresholds(slm_confidence)]
