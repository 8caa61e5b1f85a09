"""The COREA cascade: tiers in order, cheapest first; each answers with a confidence and passes the
question on below its threshold; the last tier answers what reaches it.

    SolveRequest -> tier 0 executor (contract grammar) -> ConfidenceEvent -> decision (policy.py)
                 -> accept: tier 0's answer
                 -> defer:  abort tier 0 at once, run tier 1 (same contract) -> ... -> the last tier

Two tiers ("slm", "llm") are the default and the shorthand Cascade(slm, llm, config); N tiers come
from config.tiers (Cascade.tiered). A tier is reached through an Executor (in process, or a remote
engine over the protocol) or an escalation client (gRPC scheduler, OpenAI-compatible): tiers.py.

Early deferral: every tier on an executor is decided on its ConfidenceEvent. With a
confidence-first contract that is ~5 tokens in; the request is aborted and the next tier starts in
the same step. A tier before the last one reached through an escalation client is decided once its
text is complete, on the confidence written in it (verbalized: the request's source must be sampled).

Faults: escalation calls are retried with exponential backoff within the request's deadline; a
circuit breaker per client tier stops calling a dead one. When a tier cannot answer (unreachable,
an error, text outside the contract) the question is not passed on: the result degrades to the
answer of the highest earlier tier that can answer under the contract (a later tier saw the
question after the earlier ones passed it on), running it to the end if an early deferral had
aborted it, with degraded=True and the reason, never silently. A tier that defers while the next
one is known to be down keeps its own answer, degraded, likewise.

The contract is checked here, once, for every tier: whatever text a tier returns is parsed with the
request's contract (`check_contract`). Text that does not satisfy it (cut at the token cap,
malformed, free text) is never served as an answer: a deciding tier's defers (or degrades in
slm_only), the last tier's counts as its failure, and the reason names the problem and the tier's
finish reason.

Each tier run is one `Attempt`; the result (its two-tier fields, answered_tier and the per-tier
trace) is derived from the attempts alone. Cost = tokens x per-1k prices of each tier run.
llm_only_cost is what the last tier alone would have cost: exact when it answered (the same call
is what llm_only would make); otherwise an estimate that prices the first tier's prompt and
completion token counts at the last tier's rates (same messages and contract; a different
tokenizer would count somewhat differently).

`stream()` yields events that map 1:1 to corea.v1.SolveEvent; `solve()` returns the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator

from .cascade_config import CONFIDENCE_SOURCES, MODES, CascadeConfig, ConfigError
from .contract import ContractError, Format, Parsed, UnknownFormatError, build_messages, get_format
from .escalation.base import EscalationClient, LLMContractError
from .escalation.breaker import CircuitBreaker
from .evaluation.calibrators import Calibrator, CalibratorError
from .policy import TierPolicy, Verdict, tier_draw
from .runtime.executor import (
    MAX_NEW_TOKENS_LIMIT,
    ConfidenceEvent,
    Executor,
    FinishedEvent,
    InvalidRequestError,
    Request,
    Result,
    SamplingParams,
    TokenEvent,
)
from .tiers import ACCEPT, ANSWER, DEFER, FAILED, FALLBACK, Attempt, Tier, TierTrace, call_client

log = logging.getLogger(__name__)

__all__ = [
    "Cascade", "CascadeConfig", "ConfigError", "SolveRequest", "SolveResult", "InvalidSolveRequest", "DeadlineExceeded",
    "SlmToken", "ConfidenceKnown", "Decision", "LlmToken", "TierToken", "Finished", "SolveEvent", "TierTrace",
]


class InvalidSolveRequest(InvalidRequestError):
    """A solve request refused before any model runs; the message names the field."""


class DeadlineExceeded(TimeoutError):
    """The request's timeout_s passed before its answer; whatever still ran has been stopped."""


# ------------------------------------------------------------------------------ messages
@dataclass
class SolveRequest:
    """One question. None fields take the cascade's configured defaults."""

    question: str
    request_id: str = ""
    threshold: float | None = None  # the first tier's
    thresholds: tuple[float, ...] | None = None  # one per tier but the last (N tiers); threshold overrides the first
    confidence_source: str | None = None  # "expected" | "sampled"
    mode: str | None = None  # "cascade" | "slm_only" | "llm_only"
    contract: str | Format | None = None
    max_new_tokens: int | None = None
    timeout_s: float | None = None  # time the caller will wait (a gRPC deadline), None: no limit


@dataclass
class SolveResult:
    """Mirrors corea.v1.SolveResponse."""

    request_id: str
    answer: str = ""
    reasoning: str = ""
    confidence_sampled: float | None = None
    confidence_expected: float | None = None
    threshold: float = 0.0
    confidence_source: str = "expected"
    mode: str = "cascade"
    answered_by: str = "slm"  # the tier whose text is returned: "slm" | "llm"
    deferred: bool = False
    deferral_reason: str = ""
    degraded: bool = False
    degraded_reason: str = ""
    slm_prompt_tokens: int = 0
    slm_completion_tokens: int = 0
    llm_prompt_tokens: int = 0
    llm_completion_tokens: int = 0
    cost: float = 0.0
    llm_only_cost: float = 0.0
    slm_latency_ms: float = 0.0
    llm_latency_ms: float = 0.0
    latency_ms: float = 0.0
    slm_model: str = ""
    # The last tier's model: the name its engine serves under once known (its readiness probe or a
    # first call answered); a gRPC tier's address before that; an OpenAI endpoint's configured model.
    llm_model: str = ""
    text: str = ""
    slm_finish_reason: str = ""  # the last SLM run's: confidence | stop | length | abort | error
    llm_finish_reason: str = ""  # as the escalation client reported it
    llm_tokens_estimated: bool = False  # the LLM's token counts were counted here, not reported by it
    confidence_calibrated: float | None = None  # after the served calibrator; the decision reads it
    tie_draw: float | None = None  # the request's uniform draw for the tie rule (policy.py)
    answered_tier: str = ""  # the answering tier by name ("slm" / "llm" with two tiers) and index
    answered_tier_index: int = 0
    trace: list[TierTrace] = field(default_factory=list)  # one entry per tier run, in order

    @property
    def confidence(self) -> float | None:
        return self.confidence_expected if self.confidence_source == "expected" else self.confidence_sampled


@dataclass(frozen=True)
class SlmToken:
    text: str
    index: int  # SLM tokens so far, this one included


@dataclass(frozen=True)
class ConfidenceKnown:
    sampled: float
    expected: float
    distribution: tuple[float, ...]
    slm_tokens: int  # the tier's tokens when its confidence became known
    tier_index: int = 0
    tier_name: str = ""


@dataclass(frozen=True)
class Decision:
    tier: str  # the tier that will answer
    deferred: bool
    reason: str
    threshold: float
    confidence: float | None
    tier_index: int = 0  # the tier that answers or runs next (tier is its two-tier name)
    tier_name: str = ""
    decided_by: int = 0  # the tier whose confidence decided


@dataclass(frozen=True)
class LlmToken:
    text: str
    index: int


@dataclass(frozen=True)
class TierToken:
    """A token of a tier between the first and the last (N > 2)."""

    text: str
    index: int
    tier_index: int
    tier_name: str


@dataclass(frozen=True)
class Finished:
    result: SolveResult


SolveEvent = SlmToken | ConfidenceKnown | Decision | LlmToken | TierToken | Finished


@dataclass
class _Plan:
    """A validated request with every default resolved."""

    request_id: str
    question: str
    thresholds: list[float]  # one per tier but the last
    source: str
    mode: str
    fmt: Format
    max_new_tokens: int | None
    deadline: float | None  # time.monotonic() by which the answer is due
    messages: list[dict] = field(default_factory=list)

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()


# ------------------------------------------------------------------------------ the cascade
class Cascade:
    """Tiers in order, cheapest first; each but the last passes the question on below its threshold.

    Cascade(slm, llm, config): the two-tier shorthand (llm may be None for slm_only). Cascade.tiered(
    backends, config): one backend per config.tier_list() entry (an Executor, or an EscalationClient
    for any tier after the first; None where the tier is absent)."""

    def __init__(self, slm: Executor | None, llm: EscalationClient | None, config: CascadeConfig | None = None,
                 *, middle: tuple = ()):
        self.config = (config or CascadeConfig()).validate()
        specs = self.config.tier_list()
        backends = [slm, *middle, llm]
        if len(backends) != len(specs):
            raise ConfigError(f"{len(specs)} tiers are configured but {len(backends)} backends were given")
        self.tiers = [self._tier(i, spec, backend) for i, (spec, backend) in enumerate(zip(specs, backends))]

    @classmethod
    def tiered(cls, backends: list, config: CascadeConfig) -> "Cascade":
        return cls(backends[0], backends[-1], config, middle=tuple(backends[1:-1]))

    def _tier(self, index: int, spec, backend) -> Tier:
        cfg = self.config
        policy = TierPolicy(spec.threshold, cfg.tie_defer_prob, self._load_calibrator(spec, backend))
        breaker = None
        if isinstance(backend, EscalationClient) or (backend is None and index > 0):
            breaker = CircuitBreaker(cfg.breaker_failures, cfg.breaker_cooldown_s)
        return Tier(index, spec, backend, policy, breaker)

    def _load_calibrator(self, spec, backend) -> Calibrator | None:
        """The tier's calibrator, checked against its model, contract and source; ConfigError."""
        if spec.calibrator is None:
            return None
        source = "sampled" if spec.verbalized or isinstance(backend, EscalationClient) else self.config.confidence_source
        try:
            calibrator = Calibrator.load(spec.calibrator)
            calibrator.check_serves(model=getattr(backend, "model_name", ""), contract=self.config.contract, source=source)
        except CalibratorError as err:
            raise ConfigError(f"calibrator{'' if spec.name == 'slm' else f' of tier {spec.name}'}: {err}") from None
        return calibrator

    # The two-tier names, kept for callers of the shorthand.
    @property
    def slm(self):
        return self.tiers[0].backend

    @property
    def llm(self):
        return self.tiers[-1].backend

    @property
    def breaker(self) -> CircuitBreaker:
        return self.tiers[-1].breaker

    @property
    def calibrator(self) -> Calibrator | None:
        return self.tiers[0].policy.calibrator

    # -- public API ----------------------------------------------------------------------
    async def solve(self, req: SolveRequest) -> SolveResult:
        """The result; DeadlineExceeded when req.timeout_s passes first (every tier's call is
        stopped wherever it is, prefill included)."""
        deadline = asyncio.timeout(req.timeout_s)
        try:
            async with deadline:
                # Close the generator here: left to the loop's finaliser it costs milliseconds per request.
                async with contextlib.aclosing(self.stream(req)) as events:
                    async for event in events:
                        if isinstance(event, Finished):
                            return event.result
        except TimeoutError:
            if not deadline.expired():  # a timeout from inside, not this request's deadline
                raise
            raise DeadlineExceeded(f"the request's deadline ({req.timeout_s:g} s) passed before its answer") from None
        raise RuntimeError("the cascade stream ended without a result")  # pragma: no cover

    def plan(self, req: SolveRequest) -> _Plan:
        """Validate a request and resolve its defaults; raises InvalidSolveRequest."""
        cfg = self.config
        if not isinstance(req.question, str) or not req.question.strip():
            raise InvalidSolveRequest("question is empty")
        if len(req.question) > cfg.max_question_chars:
            raise InvalidSolveRequest(f"question is {len(req.question)} characters; the limit is {cfg.max_question_chars}")
        thresholds = [t.policy.threshold for t in self.tiers[:-1]]
        if req.thresholds:
            if len(req.thresholds) != len(thresholds):
                raise InvalidSolveRequest(f"thresholds: give one per tier but the last ({len(thresholds)}), "
                                          f"got {len(req.thresholds)}")
            thresholds = list(req.thresholds)
        if req.threshold is not None:
            thresholds[0] = req.threshold
        for k, t in enumerate(thresholds):
            if not (isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and 0.0 <= t <= 1.0):
                which = f"tier {k} ('{self.tiers[k].name}') " if len(thresholds) > 1 else ""
                raise InvalidSolveRequest(f"{which}threshold must be a number in [0, 1], got {t!r}")
        source = req.confidence_source or cfg.confidence_source
        if source not in CONFIDENCE_SOURCES:
            raise InvalidSolveRequest(f"confidence_source must be one of {', '.join(CONFIDENCE_SOURCES)}, got {source!r}")
        if source == "expected" and any(t.is_client for t in self.tiers[1:-1]):
            raise InvalidSolveRequest("a middle tier reached through an escalation client states only the sampled "
                                      "(verbalized) confidence: ask for confidence_source sampled")
        cal = self.calibrator
        if cal is not None and source != cal.source:
            raise InvalidSolveRequest(f"the served calibrator reads the {cal.source} confidence, not {source}")
        mode = req.mode or cfg.mode
        if mode not in MODES:
            raise InvalidSolveRequest(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        contract = req.contract or cfg.contract
        try:
            fmt = get_format(contract)
        except UnknownFormatError as err:
            raise InvalidSolveRequest(str(err)) from None
        if cal is not None and cal.contract and contract != cal.contract:
            raise InvalidSolveRequest(f"the served calibrator was fitted for contract {cal.contract}, not {contract}")
        if not isinstance(contract, Format):  # server-side bounds apply to named contracts
            fmt = fmt.bounded(max_reasoning_chars=cfg.max_reasoning_chars, max_answer_chars=cfg.max_answer_chars)
        max_new = req.max_new_tokens or cfg.max_new_tokens
        if max_new is not None and not (isinstance(max_new, int) and 1 <= max_new <= MAX_NEW_TOKENS_LIMIT):
            raise InvalidSolveRequest(f"max_new_tokens must be in [1, {MAX_NEW_TOKENS_LIMIT}], got {max_new!r}")
        if req.timeout_s is not None and not (req.timeout_s > 0):
            raise InvalidSolveRequest(f"timeout_s must be positive, got {req.timeout_s!r}")
        return _Plan(
            request_id=req.request_id or uuid.uuid4().hex[:16],
            question=req.question,
            thresholds=[float(t) for t in thresholds],
            source=source,
            mode=mode,
            fmt=fmt,
            max_new_tokens=max_new,
            deadline=None if req.timeout_s is None else time.monotonic() + req.timeout_s,
            messages=build_messages(req.question, fmt),
        )

    async def stream(self, req: SolveRequest) -> AsyncIterator[SolveEvent]:
        plan = self.plan(req)
        run = _Run(self, plan)
        try:
            async with contextlib.aclosing(run.events()) as events:
                async for event in events:
                    yield event
        finally:
            await run.cleanup()

    def llm_available(self) -> tuple[bool, str]:
        """The last tier's state (the two-tier name)."""
        return self.tiers[-1].available()

    async def close(self) -> None:
        for tier in self.tiers[1:]:
            if tier.is_client:
                await tier.backend.close()


class _Run:
    """One request as it moves through the tiers: a list of attempts, one per tier run."""

    def __init__(self, cascade: Cascade, plan: _Plan):
        self.c, self.plan, self.cfg = cascade, plan, cascade.config
        self.tiers = cascade.tiers
        self.last = len(self.tiers) - 1
        self.started = time.perf_counter()
        self.attempts: list[Attempt] = []
        self.live: dict[str, Executor] = {}  # executor requests not yet finished: request id -> executor
        self.drains: list[asyncio.Task] = []  # aborted runs counting their last tokens

    def _new(self, k: int, role: str) -> Attempt:
        tier = self.tiers[k]
        attempt = Attempt(k, tier.name, role, model=tier.model_name)
        self.attempts.append(attempt)
        return attempt

    def _latest(self, k: int) -> Attempt | None:
        return next((a for a in reversed(self.attempts) if a.tier == k), None)

    def _decision(self, to: int, deferred: bool, reason: str, by: int, confidence: float | None) -> Decision:
        return Decision(self._legacy(to), deferred, reason, self.plan.thresholds[min(by, self.last - 1)], confidence,
                        tier_index=to, tier_name=self.tiers[to].name, decided_by=by)

    def _legacy(self, k: int) -> str:
        """The two-tier name of tier k: slm (first), llm (last), else its name."""
        return "slm" if k == 0 else "llm" if k == self.last else self.tiers[k].name

    # -- the flow ------------------------------------------------------------------------
    async def events(self) -> AsyncIterator[SolveEvent]:
        plan = self.plan
        if plan.mode == "llm_only":
            ok, why = self.tiers[-1].available()
            if ok:
                yield self._decision(self.last, False, "mode llm_only", 0, None)
                attempt = self._new(self.last, "answer")
                async for event in self._run(attempt):
                    yield event
                if attempt.usable:
                    attempt.decision = ANSWER
                    yield Finished(await self.finish(attempt))
                    return
                why = f"{self.tiers[-1].label} failed: {attempt.error or attempt.problem}"
            else:
                yield self._decision(0, False, f"mode llm_only but {why}", 0, None)
            yield Finished(await self.finish(*await self._fall_back(why, self.last - 1)))
            return

        if plan.mode == "slm_only":
            attempt = self._new(0, "answer")
            async for event in self._run(attempt):
                yield event
            if attempt.usable and attempt.confidence is not None:
                attempt.decision = ANSWER
                yield self._decision(0, False, "mode slm_only", 0, attempt.confidence)
                yield Finished(await self.finish(attempt))
                return
            problem = attempt.problem if not attempt.usable else "no confidence was read"
            reason = f"{self.tiers[0].label} output unusable ({problem})"
            attempt.decision, attempt.reason = FAILED, reason
            yield self._decision(0, False, reason, 0, attempt.confidence)
            yield Finished(await self.finish(*await self._fall_back(f"{reason}; mode slm_only forbids the LLM", 0)))
            return

        k = 0
        while True:
            tier = self.tiers[k]
            attempt = self._new(k, "answer" if k == self.last else "decide")
            async for event in self._run(attempt):
                yield event
            if k == self.last:
                if attempt.usable:
                    attempt.decision = ANSWER
                    yield Finished(await self.finish(attempt))
                else:
                    attempt.decision = FAILED
                    why = f"{tier.label} failed: {attempt.error or attempt.problem}"
                    yield Finished(await self.finish(*await self._fall_back(why, k - 1)))
                return
            if attempt.decision == DEFER:  # decided early, on the confidence: the next tier is on its way
                k += 1
                continue
            if attempt.unreachable and k > 0:  # a middle tier failed: degrade, do not pass on
                attempt.decision = FAILED
                why = f"{tier.label} failed: {attempt.error or attempt.problem}"
                yield Finished(await self.finish(*await self._fall_back(why, k - 1)))
                return
            decision, why = self._decide_after(attempt)
            yield decision
            if attempt.decision == ACCEPT:
                yield Finished(await self.finish(attempt))
                return
            if decision.tier_index == k:  # it defers, but the next tier cannot take the question
                yield Finished(await self.finish(*await self._fall_back(why, k)))
                return
            k += 1

    def _judge(self, attempt: Attempt) -> Verdict:
        k, plan = attempt.tier, self.plan
        tier = self.tiers[k]
        policy = dataclasses.replace(tier.policy, threshold=plan.thresholds[k])
        source = "verbalized" if tier.is_client else plan.source
        verdict = policy.judge(attempt.confidence, tier_draw(self.cfg.tie_seed, plan.request_id, k), source)
        if policy.policy.at_tie(verdict.used) and policy.tie_defer_prob > 0:
            log.info("request %s tier %s at the tie: draw %.6f, tie_defer_prob %g -> %s", plan.request_id, tier.name,
                     verdict.draw, policy.tie_defer_prob, "defer" if verdict.defers else "accept")
        attempt.verdict = verdict
        return verdict

    def _decide_after(self, attempt: Attempt) -> tuple[Decision, str]:
        """The decision of a tier that ran to the end (no early deferral): (event, why degraded)."""
        k = attempt.tier
        if not attempt.usable or attempt.confidence is None:
            problem = attempt.problem if not attempt.usable else "no confidence was read"
            attempt.decision, attempt.reason = DEFER, f"{self.tiers[k].label} output unusable ({problem})"
        else:
            verdict = self._judge(attempt)
            attempt.decision, attempt.reason = (DEFER if verdict.defers else ACCEPT), verdict.reason
        if attempt.decision == ACCEPT:
            return self._decision(k, False, attempt.reason, k, attempt.confidence), ""
        ok, why = self.tiers[k + 1].available()
        if ok:
            return self._decision(k + 1, True, attempt.reason, k, attempt.confidence), ""
        if not attempt.usable or attempt.confidence is None:
            why = f"{attempt.reason}; {why}"
        return self._decision(k, True, attempt.reason, k, attempt.confidence), why

    # -- running one tier ----------------------------------------------------------------
    def _run(self, attempt: Attempt) -> AsyncIterator[SolveEvent]:
        tier = self.tiers[attempt.tier]
        return self._run_client(attempt) if tier.is_client else self._run_executor(attempt)

    async def _run_executor(self, attempt: Attempt, quiet: bool = False) -> AsyncIterator[SolveEvent]:
        """Stream one executor run; a tier that decides does so on its ConfidenceEvent, and an
        early deferral aborts it (its last tokens are counted in the background)."""
        k, plan = attempt.tier, self.plan
        tier = self.tiers[k]
        request = Request(
            messages=plan.messages, contract=plan.fmt,
            sampling=SamplingParams(temperature=tier.config.temperature, max_new_tokens=plan.max_new_tokens),
            stop_at_confidence=True, request_id=f"{plan.request_id}-{tier.name}-{uuid.uuid4().hex[:6]}",
        )
        try:
            stream = await tier.backend.submit_async(request)  # tokenizing, grammar compile: off the loop
        except Exception as err:  # the first tier: bad input, the caller's error; a later one fails like any call
            if k == 0:
                raise
            attempt.finish_reason, attempt.unreachable = "error", True
            attempt.error, attempt.problem = str(err), f"the tier failed: {err}"
            return
        self.live[request.request_id] = tier.backend
        iterator = stream.__aiter__()
        tokens = 0
        async for event in iterator:
            if isinstance(event, TokenEvent):
                tokens += event.token_id is not None  # None: the held-back text flushed at the end
                if event.text and not quiet:
                    yield self._token(k, event.text, tokens)
            elif isinstance(event, ConfidenceEvent):
                r = attempt.reading = event.reading
                attempt.confidence = r.expected if plan.source == "expected" else r.sampled
                if not quiet:
                    yield ConfidenceKnown(r.sampled, r.expected, tuple(r.probs), tokens, tier_index=k, tier_name=tier.name)
                if attempt.role == "decide" and plan.mode == "cascade":
                    verdict = self._judge(attempt)
                    ok, _ = self.tiers[k + 1].available()
                    if verdict.defers and ok:  # early deferral: stop this tier, the next one starts now
                        tier.backend.abort(request.request_id)
                        attempt.decision, attempt.reason = DEFER, verdict.reason
                        self.drains.append(asyncio.ensure_future(self._drain(iterator, attempt, request)))
                        yield self._decision(k + 1, True, verdict.reason, k, attempt.confidence)
                        return
                    # the next tier is known to be down: let this one finish so its answer can be used
            elif isinstance(event, FinishedEvent):
                self._record(attempt, request, event.result)

    async def _drain(self, iterator, attempt: Attempt, request: Request) -> None:
        """Consume an aborted stream up to its FinishedEvent (for the token count)."""
        async for event in iterator:
            if isinstance(event, FinishedEvent):
                decision, reason = attempt.decision, attempt.reason
                self._record(attempt, request, event.result)
                attempt.decision, attempt.reason = decision, reason

    def _record(self, attempt: Attempt, request: Request, result: Result) -> None:
        self.live.pop(request.request_id, None)
        attempt.prompt_tokens, attempt.completion_tokens = result.prompt_tokens, result.completion_tokens
        attempt.latency_s, attempt.finish_reason, attempt.text = result.latency_s, result.finish_reason, result.text
        attempt.error, attempt.unreachable = result.error or "", result.finish_reason == "error"
        if attempt.reading is None and result.confidence is not None:
            attempt.reading = result.confidence
            attempt.confidence = result.confidence.expected if self.plan.source == "expected" else result.confidence.sampled
        attempt.cost = self.tiers[attempt.tier].cost(result.prompt_tokens, result.completion_tokens)
        if result.finish_reason == "abort":  # stopped on purpose (early deferral): not a contract matter
            attempt.parsed, attempt.problem = None, "aborted"
        else:
            attempt.parsed, attempt.problem = check_contract(self.plan.fmt, result.text, result.finish_reason, result.error)

    def _token(self, k: int, text: str, index: int) -> SolveEvent:
        if k == 0:
            return SlmToken(text, index)
        if k == self.last:
            return LlmToken(text, index)
        return TierToken(text, index, k, self.tiers[k].name)

    async def _run_client(self, attempt: Attempt, quiet: bool = False) -> AsyncIterator[SolveEvent]:
        """An escalation call (tiers.call_client); a tier that decides reads the confidence written in its text."""
        plan = self.plan
        async for index, text in call_client(self.tiers[attempt.tier], attempt, plan.messages, plan.fmt,
                                             plan.max_new_tokens, plan.request_id, plan.deadline, self.cfg):
            if not quiet:
                yield self._token(attempt.tier, text, index)
        if attempt.unreachable:
            return
        attempt.parsed, attempt.problem = check_contract(plan.fmt, attempt.text, attempt.finish_reason)
        if attempt.parsed is None:
            attempt.error = str(LLMContractError(attempt.problem))
        elif attempt.role == "decide":
            attempt.confidence = attempt.parsed.confidence  # verbalized: only what its text says

    # -- degraded answers ----------------------------------------------------------------
    async def _fall_back(self, why: str, below: int) -> tuple[Attempt | None, str]:
        """(the attempt to answer with, the degraded reason). The answer is the one of the highest
        tier at or below `below` that can answer under the contract: a later tier saw the question
        after the earlier ones passed it on, so its answer is the best informed. A run aborted by an
        early deferral (or never made, in llm_only) is run again to the end, silently."""
        if self.drains:
            await asyncio.gather(*self.drains, return_exceptions=True)
        problems = []
        for j in range(below, -1, -1):
            attempt = self._latest(j)
            if attempt is None or attempt.finish_reason == "abort" or (attempt.problem == "aborted"):
                attempt = self._new(j, "fallback")
                async with contextlib.aclosing(self._run(attempt)) as quiet:
                    async for _ in quiet:
                        pass
                attempt.decision = FALLBACK
            if attempt.usable:
                return attempt, f"{why}; kept the {self.tiers[j].label} answer"
            problems.append((self.tiers[j].label, attempt.problem))
        if len(problems) == 1:
            label, problem = problems[0]
            return None, f"{why}; the {label} has no usable answer either ({problem})"
        listed = "; ".join(f"{label}: {problem}" for label, problem in problems)
        return None, f"{why}; no earlier tier has a usable answer either ({listed})"

    # -- the result ----------------------------------------------------------------------
    async def finish(self, answer: Attempt | None, degraded_reason: str = "") -> SolveResult:
        """The result, derived from the attempts alone."""
        if self.drains:
            await asyncio.gather(*self.drains, return_exceptions=True)
        plan, tiers, attempts = self.plan, self.tiers, self.attempts
        first = [a for a in attempts if a.tier == 0]
        final = [a for a in attempts if a.tier == self.last]
        res = SolveResult(
            request_id=plan.request_id, threshold=plan.thresholds[0], confidence_source=plan.source, mode=plan.mode,
            slm_model=tiers[0].model_name, llm_model=tiers[-1].model_name,
        )
        read = [a for a in first if a.reading is not None]
        if read:  # the tier-0 run whose answer is served, else the one that decided
            res.confidence_sampled, res.confidence_expected = read[-1].reading.sampled, read[-1].reading.expected
        decided = next((a for a in first if a.verdict is not None), None)
        if decided is not None:
            res.confidence_calibrated, res.tie_draw = decided.verdict.calibrated, decided.verdict.draw
        deferrals = [a for a in attempts if a.decision == DEFER]
        if deferrals:
            res.deferred = True
            res.deferral_reason = deferrals[0].reason if len(deferrals) == 1 else "; ".join(
                f"{tiers[a.tier].label}: {a.reason}" for a in deferrals)
        res.slm_prompt_tokens = sum(a.prompt_tokens for a in first)
        res.slm_completion_tokens = sum(a.completion_tokens for a in first)
        res.slm_latency_ms = sum(a.latency_s for a in first) * 1000
        if first:
            res.slm_finish_reason = first[-1].finish_reason
        if final and self.last > 0:
            done = final[-1]
            res.llm_prompt_tokens = sum(a.prompt_tokens for a in final)
            res.llm_completion_tokens = sum(a.completion_tokens for a in final)
            res.llm_latency_ms = sum(a.latency_s for a in final) * 1000
            res.llm_finish_reason, res.llm_tokens_estimated = done.finish_reason, done.tokens_estimated
            res.llm_model = done.model or res.llm_model
        if answer is not None:
            res.answered_by, res.answered_tier, res.answered_tier_index = self._legacy(answer.tier), answer.name, answer.tier
            res.text, res.answer, res.reasoning = answer.text, answer.parsed.answer, answer.parsed.reasoning
        else:
            res.answered_by, res.answered_tier, res.answered_tier_index = "slm", tiers[0].name, 0
            res.text = first[-1].text if first else ""
        if degraded_reason:
            res.degraded, res.degraded_reason = True, degraded_reason
        res.cost = sum(a.cost for a in attempts)
        last = tiers[-1]
        answered_last = [a for a in final if a.prompt_tokens or a.completion_tokens]
        if answered_last:
            res.llm_only_cost = sum(a.cost for a in answered_last)
        elif first:  # estimate: the first tier's last run priced at the last tier's rates (module docstring)
            res.llm_only_cost = last.cost(first[-1].prompt_tokens, first[-1].completion_tokens)
        res.trace = [TierTrace.of(a, plan.thresholds[a.tier] if a.tier < self.last else None) for a in attempts]
        res.latency_ms = (time.perf_counter() - self.started) * 1000
        return res

    async def cleanup(self) -> None:
        """Stop whatever still runs (the client went away, or an error)."""
        for request_id, executor in list(self.live.items()):
            executor.abort(request_id)
        for task in self.drains:
            if not task.done():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass


def check_contract(fmt: Format, text: str, finish_reason: str, error: str | None = None) -> tuple[Parsed | None, str]:
    """(the answer, "") when a tier's text satisfies the contract, else (None, what is wrong).

    The one place where any tier's output becomes an answer. Tags are accepted as well as the
    requested syntax (an endpoint without a grammar may answer in the literature's form); the
    problem names the parser's complaint and the tier's finish reason ("length": cut at the cap).
    """
    from .contract import parse_tags

    if finish_reason == "error":
        return None, f"the tier failed: {error or 'unknown error'}"
    errors = []
    for parse in (fmt.parse, parse_tags):
        try:
            return parse(text), ""
        except ContractError as err:
            errors.append(str(err))
    shown = text if len(text) <= 60 else text[:57] + "..."
    return None, f"output does not satisfy the {fmt.name} contract: {errors[0]}; finish_reason {finish_reason}; text {shown!r}"
