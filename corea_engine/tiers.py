"""The cascade's tiers: what each one is reached through, and the record of one run of one tier.

A tier is reached through an Executor (in process, or RemoteExecutor over the engines' gRPC
protocol: it streams tokens and reads the confidence distribution at the confidence position)
or an EscalationClient (gRPC scheduler or OpenAI-compatible endpoint: text only, with retries
and a circuit breaker). A tier before the last one reached through a client can only give the
confidence written in its text (the verbalized, "sampled" one), read after its answer is complete.

An `Attempt` is one run of one tier for one request. A tier may run twice (aborted on an early
deferral, then run again for a degraded answer when a later tier fails); the result and its
per-tier trace are derived from the attempts alone (cascade._Run.finish), so what the result says
about a tier is what that run did.
"""

from __future__ import annotations

from dataclasses import dataclass

from .cascade_config import TierConfig
from .contract import Parsed
from .escalation.base import EscalationClient
from .escalation.breaker import CircuitBreaker
from .policy import TierPolicy, Verdict
from .runtime.executor import ConfidenceReading, Executor

# What an attempt ended as, in the trace (TierTrace.decision):
ACCEPT = "accept"      # its confidence met the threshold: its answer is the result
DEFER = "defer"        # below the threshold (or no usable answer): the question went on
ANSWER = "answer"      # the last tier (or the only one a mode asks for) answered
FAILED = "failed"      # it did not answer under the contract (error, unreachable, bad output)
FALLBACK = "fallback"  # run again for a degraded answer after a later tier failed


@dataclass
class Tier:
    """One configured tier of a running cascade."""

    index: int
    config: TierConfig
    backend: Executor | EscalationClient | None
    policy: TierPolicy  # not read for the last tier
    breaker: CircuitBreaker | None = None  # escalation clients only

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def label(self) -> str:
        return self.config.label

    @property
    def is_client(self) -> bool:
        return isinstance(self.backend, EscalationClient)

    @property
    def model_name(self) -> str:
        return getattr(self.backend, "model_name", "") if self.backend is not None else ""

    def available(self) -> tuple[bool, str]:
        """Can a call go out now? (False, why) when none is configured or its breaker is open."""
        if self.backend is None:
            return False, f"no {self.label} is configured"
        if self.breaker is not None and not self.breaker.would_allow():
            return False, f"the {self.label} circuit breaker is {self.breaker.state} after repeated failures"
        if getattr(self.backend, "closed", False):
            return False, f"the {self.label} runtime is closed"
        return True, ""

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Tokens at this tier's per-1k prices."""
        return (prompt_tokens * self.config.prompt_price + completion_tokens * self.config.completion_price) / 1000


@dataclass
class Attempt:
    """One run of one tier. Filled in as the run goes; never shared between runs."""

    tier: int
    name: str
    role: str  # decide (may pass the question on) | answer | fallback
    model: str = ""
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_estimated: bool = False
    latency_s: float = 0.0
    finish_reason: str = ""  # confidence | stop | length | abort | error (executors); as reported (clients)
    reading: ConfidenceReading | None = None  # executors: the distribution at the confidence position
    confidence: float | None = None  # what the decision read: the reading's source, or the text's
    verdict: Verdict | None = None
    decision: str = ""  # ACCEPT | DEFER | ANSWER | FAILED | FALLBACK
    reason: str = ""
    parsed: Parsed | None = None  # its answer, when its text satisfies the contract
    problem: str = "it did not run"
    error: str = ""
    unreachable: bool = False  # it gave no answer at all (error, unreachable, refused): a failure, not a deferral
    cost: float = 0.0

    @property
    def usable(self) -> bool:
        return self.parsed is not None


@dataclass
class TierTrace:
    """One attempt as the result reports it (corea.v1.TierTrace)."""

    tier_index: int
    tier: str
    model: str = ""
    decision: str = ""
    reason: str = ""
    confidence: float | None = None
    confidence_calibrated: float | None = None
    threshold: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    cost: float = 0.0
    finish_reason: str = ""

    @classmethod
    def of(cls, attempt: Attempt, threshold: float | None) -> "TierTrace":
        v = attempt.verdict
        return cls(attempt.tier, attempt.name, attempt.model, attempt.decision, attempt.reason, attempt.confidence,
                   None if v is None else v.calibrated, threshold if v is not None else None,
                   attempt.prompt_tokens, attempt.completion_tokens, attempt.latency_s * 1000, attempt.cost,
                   attempt.finish_reason)
