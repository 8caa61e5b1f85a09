"""One request's measurements and the per-level summary.

The summary's keys are the contract between the Python load generator and the C++ client
(cpp/corea_load.cc writes the same ones), so reports from both can be compared line by line.
Percentiles interpolate linearly between closest ranks (numpy's default), as the C++ client does.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

LEVEL_KEYS = (
    "concurrency", "requests", "ok", "errors", "duration_s", "requests_per_s",
    "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "latency_mean_ms",
    "ttd_p50_ms", "ttd_p90_ms", "ttd_p99_ms",
    "deferred", "deferral_rate", "slm_tokens", "llm_tokens", "slm_tokens_per_s", "llm_tokens_per_s",
    "error_kinds",
)


@dataclass
class Sample:
    """One request as a client saw it.

    decision_s: time to the routing decision (the Decision event; for the bare executor, the
    confidence event, where a decision could be taken). Tokens are completion tokens per tier.
    """

    latency_s: float
    decision_s: float | None = None
    ok: bool = True
    deferred: bool = False
    slm_tokens: int = 0
    llm_tokens: int = 0
    error: str | None = None  # the kind of failure (a gRPC status name, an exception type)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = q / 100.0 * (len(ordered) - 1)
    lo, hi = math.floor(rank), math.ceil(rank)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def summarize(concurrency: int, samples: list[Sample], duration_s: float) -> dict:
    """The figures of one concurrency level; throughput counts successful requests only."""
    good = [s for s in samples if s.ok]
    latency = [s.latency_s * 1000 for s in good]
    decision = [s.decision_s * 1000 for s in good if s.decision_s is not None]
    deferred = sum(s.deferred for s in good)
    slm_tokens = sum(s.slm_tokens for s in good)
    llm_tokens = sum(s.llm_tokens for s in good)
    per_s = (lambda n: n / duration_s) if duration_s > 0 else (lambda n: None)
    return {
        "concurrency": concurrency,
        "requests": len(samples),
        "ok": len(good),
        "errors": len(samples) - len(good),
        "duration_s": duration_s,
        "requests_per_s": per_s(len(good)),
        "latency_p50_ms": percentile(latency, 50),
        "latency_p90_ms": percentile(latency, 90),
        "latency_p99_ms": percentile(latency, 99),
        "latency_mean_ms": sum(latency) / len(latency) if latency else None,
        "ttd_p50_ms": percentile(decision, 50),
        "ttd_p90_ms": percentile(decision, 90),
        "ttd_p99_ms": percentile(decision, 99),
        "deferred": deferred,
        "deferral_rate": deferred / len(good) if good else None,
        "slm_tokens": slm_tokens,
        "llm_tokens": llm_tokens,
        "slm_tokens_per_s": per_s(slm_tokens),
        "llm_tokens_per_s": per_s(llm_tokens),
        "error_kinds": dict(Counter(s.error or "unknown" for s in samples if not s.ok)),
    }
