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

import asyncio
import time
from dataclasses import dataclass
from typing import AsyncIterator

from .cascade_config import TierConfig
from .contract import Parsed
from .escalation.base import (
    Completion, EscalationClient, GenerationParams, LLMError, LLMRequestError, LLMUnavailableError,
)
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


async def call_client(tier: Tier, attempt: Attempt, messages: list[dict], fmt, max_new_tokens: int | None,
                      request_id: str, deadline: float | None, cfg) -> AsyncIterator[tuple[int, str]]:
    """One escalation call of `tier`, recorded in `attempt`: yields (index, text) chunks as they come.

    Retries with exponential backoff (cfg.llm_retries, retry_backoff_s, llm_timeout_s) inside the
    request's deadline (time.monotonic()), keeping a little of it back so a degraded answer can
    still reach the caller; the tier's breaker sees every call's verdict. A call that fails sets
    attempt.unreachable and attempt.error; the contract is the caller's to check."""
    breaker = tier.breaker
    left = None if deadline is None else deadline - time.monotonic()
    cutoff = None if left is None else deadline - min(0.25, left / 10)
    started = time.perf_counter()
    error: LLMError | None = None
    completion: Completion | None = None
    holding = False  # this call holds a slot from breaker.allow() (the half-open trial, maybe)

    def time_left() -> float | None:
        return None if cutoff is None else cutoff - time.monotonic()

    try:
        calls = cfg.llm_retries + 1
        for call in range(calls):
            remaining = time_left()
            if remaining is not None and remaining <= 0.01:
                error = LLMUnavailableError(f"the request's deadline passed before the {tier.label} answered")
                break
            if not breaker.allow():
                refused = f"the {tier.label} circuit breaker is {breaker.state}"
                error = LLMUnavailableError(f"{error}; {refused}" if error else refused)
                break
            holding = True
            timeout = cfg.llm_timeout_s if remaining is None else min(cfg.llm_timeout_s, remaining)
            params = GenerationParams(contract=fmt, max_new_tokens=max_new_tokens, temperature=tier.config.temperature,
                                      request_id=f"{request_id}-{tier.name}", timeout_s=timeout)
            sent = 0
            try:
                async for item in tier.backend.stream(messages, params):
                    if isinstance(item, Completion):
                        completion = item
                    elif item:
                        sent += 1
                        yield sent, item
                if completion is None:
                    raise LLMUnavailableError(f"the {tier.label} stream ended without a result")
                breaker.record_success()  # it answered; whether the answer is usable is the contract's matter
                holding, error = False, None
                break
            except LLMRequestError as err:
                breaker.release()
                holding, error = False, err
                break
            except LLMUnavailableError as err:
                breaker.record_failure()
                holding = False
                error = LLMUnavailableError(f"{err} (attempt {call + 1} of {calls})")
                if sent:  # tokens already reached the client: a retry would repeat them
                    break
            if call + 1 < calls:
                delay = min(cfg.retry_backoff_s * (2 ** call), cfg.retry_backoff_max_s)
                remaining = time_left()
                if remaining is not None:
                    delay = min(delay, max(remaining - 0.01, 0))
                await asyncio.sleep(delay)
    except Exception as err:  # an unexpected client failure fails this request's call only
        breaker.record_failure()
        holding = False
        error = LLMUnavailableError(f"{type(err).__name__}: {err}")
    finally:
        if holding:  # cancelled, or the caller went away mid-call; a refused call holds nothing to free
            breaker.release()
        attempt.latency_s = time.perf_counter() - started
    if completion is not None:
        attempt.text, attempt.finish_reason = completion.text, completion.finish_reason
        attempt.prompt_tokens, attempt.completion_tokens = completion.prompt_tokens, completion.completion_tokens
        attempt.tokens_estimated, attempt.model = completion.estimated, completion.model or attempt.model
        attempt.cost = tier.cost(completion.prompt_tokens, completion.completion_tokens)
    if error is not None:  # finish_reason stays the endpoint's own ("" without a completion)
        attempt.error, attempt.problem, attempt.unreachable = str(error), f"the tier failed: {error}", True
