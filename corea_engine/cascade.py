"""The COREA cascade: the SLM answers with a confidence; below the threshold the LLM answers.

    SolveRequest -> SLM executor (contract grammar) -> ConfidenceEvent -> decision
                 -> accept: the SLM's answer
                 -> defer:  abort the SLM at once, call the LLM (same contract) -> its answer

Early deferral: the decision is taken on the ConfidenceEvent. With a confidence-first contract
that is ~5 SLM tokens in; the SLM request is aborted and the LLM call starts in the same step.
With an answer-first contract the SLM stops on that step anyway.

Faults: LLM calls are retried with exponential backoff within the request's deadline; a
circuit breaker stops calling a dead LLM. Whenever the LLM cannot answer, the result carries
the SLM's answer with degraded=True and the reason (running the SLM to completion if it had
been aborted early), never silently.

The contract is checked here, once, for every tier and every escalation client: whatever text
a tier returns is parsed with the request's contract (`check_contract`). Text that does not
satisfy it (cut at the token cap, malformed, free text) is never served as an answer: the SLM's
defers (or degrades in slm_only), the LLM's counts as an LLM failure (the SLM answer is kept,
degraded), and the reason names the problem and the tier's finish reason.

Cost = tokens x per-1k prices of each tier. llm_only_cost is what the LLM alone would have
cost: exact when the LLM answered (the same call is what llm_only would make); otherwise an
estimate that prices the SLM's prompt and completion token counts at LLM rates (same messages
and contract; a different tokenizer would count somewhat differently).

`stream()` yields events that map 1:1 to corea.v1.SolveEvent; `solve()` returns the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator

from .cascade_config import CONFIDENCE_SOURCES, MODES, CascadeConfig, ConfigError
from .contract import ContractError, Format, Parsed, UnknownFormatError, build_messages, get_format
from .escalation.base import (
    Completion,
    EscalationClient,
    GenerationParams,
    LLMContractError,
    LLMError,
    LLMRequestError,
    LLMUnavailableError,
)
from .escalation.breaker import CircuitBreaker
from .evaluation.calibrators import Calibrator, CalibratorError
from .policy import Policy, tie_draw
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

log = logging.getLogger(__name__)

__all__ = [
    "Cascade", "CascadeConfig", "ConfigError", "SolveRequest", "SolveResult", "InvalidSolveRequest", "DeadlineExceeded",
    "SlmToken", "ConfidenceKnown", "Decision", "LlmToken", "Finished", "SolveEvent",
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
    threshold: float | None = None
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
    llm_model: str = ""
    text: str = ""
    slm_finish_reason: str = ""  # the last SLM run's: confidence | stop | length | abort | error
    llm_finish_reason: str = ""  # as the escalation client reported it
    llm_tokens_estimated: bool = False  # the LLM's token counts were counted here, not reported by it
    confidence_calibrated: float | None = None  # after the served calibrator; the decision reads it
    tie_draw: float | None = None  # the request's uniform draw for the tie rule (policy.py)

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
    slm_tokens: int


@dataclass(frozen=True)
class Decision:
    tier: str  # the tier that will answer
    deferred: bool
    reason: str
    threshold: float
    confidence: float | None


@dataclass(frozen=True)
class LlmToken:
    text: str
    index: int


@dataclass(frozen=True)
class Finished:
    result: SolveResult


SolveEvent = SlmToken | ConfidenceKnown | Decision | LlmToken | Finished


@dataclass
class _Plan:
    """A validated request with every default resolved."""

    request_id: str
    question: str
    threshold: float
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
    """SLM first; the LLM when the SLM's confidence is below the threshold."""

    def __init__(self, slm: Executor, llm: EscalationClient | None, config: CascadeConfig | None = None):
        self.slm = slm
        self.llm = llm
        self.config = (config or CascadeConfig()).validate()
        self.calibrator = self._load_calibrator()
        self.breaker = CircuitBreaker(self.config.breaker_failures, self.config.breaker_cooldown_s)

    def _load_calibrator(self) -> Calibrator | None:
        """The configured calibrator, checked against this server's model, contract and source; ConfigError."""
        cfg = self.config
        if cfg.calibrator is None:
            return None
        try:
            calibrator = Calibrator.load(cfg.calibrator)
            calibrator.check_serves(model=getattr(self.slm, "model_name", ""), contract=cfg.contract,
                                    source=cfg.confidence_source)
        except CalibratorError as err:
            raise ConfigError(f"calibrator: {err}") from None
        return calibrator

    # -- public API ----------------------------------------------------------------------
    async def solve(self, req: SolveRequest) -> SolveResult:
        """The result; DeadlineExceeded when req.timeout_s passes first (the SLM and the LLM
        call are stopped wherever they are, prefill included)."""
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
        threshold = cfg.threshold if req.threshold is None else req.threshold
        if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
            raise InvalidSolveRequest(f"threshold must be a number in [0, 1], got {threshold!r}")
        source = req.confidence_source or cfg.confidence_source
        if source not in CONFIDENCE_SOURCES:
            raise InvalidSolveRequest(f"confidence_source must be one of {', '.join(CONFIDENCE_SOURCES)}, got {source!r}")
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
            threshold=float(threshold),
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
        if self.llm is None:
            return False, "no LLM is configured"
        if not self.breaker.would_allow():
            return False, f"the LLM circuit breaker is {self.breaker.state} after repeated failures"
        return True, ""

    async def close(self) -> None:
        if self.llm is not None:
            await self.llm.close()


class _Run:
    """The state of one request as it moves through the tiers."""

    def __init__(self, cascade: Cascade, plan: _Plan):
        self.c, self.plan, self.cfg = cascade, plan, cascade.config
        self.started = time.perf_counter()
        self.slm_request: Request | None = None
        self.slm_result: Result | None = None  # the last SLM run
        self.slm_runs: list[Result] = []
        self.decision: Decision | None = None
        self.slm_tokens = 0
        self.slm_finished = False
        self.reading = None
        self.slm_drain: asyncio.Task | None = None
        self.llm_task: asyncio.Task | None = None
        self.llm_queue: asyncio.Queue = asyncio.Queue()
        self.llm_completion: Completion | None = None
        self.llm_parsed: Parsed | None = None  # the LLM's answer when its text satisfies the contract
        self.llm_error: LLMError | None = None
        self.slm_parsed: Parsed | None = None
        self.slm_problem = "the SLM did not run"
        self.llm_started = 0.0
        self.llm_elapsed = 0.0
        self.result = SolveResult(
            request_id=plan.request_id, threshold=plan.threshold, confidence_source=plan.source,
            mode=plan.mode, slm_model=getattr(cascade.slm, "model_name", "") if cascade.slm else "",
            llm_model=getattr(cascade.llm, "model_name", "") if cascade.llm else "",
        )

    def confidence(self) -> float | None:
        if self.reading is None:
            return None
        return self.reading.expected if self.plan.source == "expected" else self.reading.sampled

    def _slm_request(self) -> Request:
        return Request(
            messages=self.plan.messages, contract=self.plan.fmt,
            sampling=SamplingParams(temperature=self.cfg.slm_temperature, max_new_tokens=self.plan.max_new_tokens),
            stop_at_confidence=True, request_id=f"{self.plan.request_id}-slm-{uuid.uuid4().hex[:6]}",
        )

    # -- the flow ------------------------------------------------------------------------
    async def events(self) -> AsyncIterator[SolveEvent]:
        plan = self.plan
        if plan.mode == "llm_only":
            ok, why = self.c.llm_available()
            if ok:
                self.decision = Decision("llm", False, "mode llm_only", plan.threshold, None)
                yield self.decision
                self._start_llm()
                async for event in self._llm_events():
                    yield event
                if self.llm_parsed is not None:
                    yield Finished(self._finish())
                    return
                why = f"LLM failed: {self.llm_error}"
            else:
                self.decision = Decision("slm", False, f"mode llm_only but {why}", plan.threshold, None)
                yield self.decision
            await self._run_slm_to_completion()
            yield Finished(self._finish(degraded_reason=why))
            return

        decision: Decision | None = None
        self.slm_request = self._slm_request()
        stream = self.c.slm.submit(self.slm_request)  # InvalidRequestError propagates: bad input
        iterator = stream.__aiter__()
        async for event in iterator:
            if isinstance(event, TokenEvent):
                self.slm_tokens += 1
                if event.text:
                    yield SlmToken(event.text, self.slm_tokens)
            elif isinstance(event, ConfidenceEvent):
                self.reading = event.reading
                r = event.reading
                yield ConfidenceKnown(r.sampled, r.expected, tuple(r.probs), self.slm_tokens)
                conf = self.confidence()
                if plan.mode == "cascade" and self._defers(conf):
                    ok, _ = self.c.llm_available()
                    if ok:  # early deferral: abort the SLM and call the LLM in the same step
                        self.c.slm.abort(self.slm_request.request_id)
                        self._start_llm()
                        self.slm_drain = asyncio.ensure_future(self._drain(iterator))
                        decision = self.decision = Decision("llm", True, self._reason(conf), plan.threshold, conf)
                        yield decision
                        break
                    # LLM known to be down: let the SLM finish so its answer can be returned.
            elif isinstance(event, FinishedEvent):
                self._record_slm(event.result)
        if decision is None:
            decision, degraded_reason = self._decide_after_slm()
            self.decision = decision
            yield decision
            if not decision.deferred or decision.tier == "slm":
                yield Finished(self._finish(degraded_reason=degraded_reason))
                return
            self._start_llm()
        async for event in self._llm_events():
            yield event
        if self.slm_drain is not None:
            await self.slm_drain
        if self.llm_parsed is not None:
            yield Finished(self._finish())
            return
        if self.slm_result is None or self.slm_result.finish_reason == "abort":
            await self._run_slm_to_completion()
        yield Finished(self._finish(degraded_reason=f"LLM failed: {self.llm_error}"))

    def _defers(self, conf: float) -> bool:
        """The policy's decision (policy.py) on the calibrated confidence; records what it read."""
        res, cal = self.result, self.c.calibrator
        used = conf if cal is None else float(cal.apply(conf))
        res.confidence_calibrated = None if cal is None else used
        res.tie_draw = tie_draw(self.cfg.tie_seed, self.plan.request_id)
        policy = Policy(self.plan.threshold, self.cfg.tie_defer_prob)
        defers = policy.defers(used, res.tie_draw)
        if policy.at_tie(used) and self.cfg.tie_defer_prob > 0:
            log.info("request %s at the tie: draw %.6f, tie_defer_prob %g -> %s", self.plan.request_id,
                     res.tie_draw, self.cfg.tie_defer_prob, "defer" if defers else "accept")
        return defers

    def _reason(self, conf: float) -> str:
        """Why the policy decided as it did, in the confidence it read."""
        res, plan = self.result, self.plan
        used = conf if res.confidence_calibrated is None else res.confidence_calibrated
        name = f"{plan.source} confidence {conf:.3f}" + ("" if res.confidence_calibrated is None else f" (calibrated {used:.3f})")
        if Policy(plan.threshold).at_tie(used) and self.cfg.tie_defer_prob > 0:
            return f"{name} at threshold {plan.threshold:g}: draw {res.tie_draw:.4f} vs tie_defer_prob {self.cfg.tie_defer_prob:g}"
        return f"{name} {'<' if used < plan.threshold else '>='} threshold {plan.threshold:g}"

    def _decide_after_slm(self) -> tuple[Decision, str]:
        """The decision once the SLM has finished (no early deferral happened)."""
        plan, conf = self.plan, self.confidence()
        if self.slm_parsed is None or conf is None:
            problem = self.slm_problem if self.slm_parsed is None else "no confidence was read"
            reason = f"SLM output unusable ({problem})"
            if plan.mode == "slm_only":
                return Decision("slm", False, reason, plan.threshold, conf), f"{reason}; mode slm_only forbids the LLM"
            ok, why = self.c.llm_available()
            return Decision("llm" if ok else "slm", True, reason, plan.threshold, conf), "" if ok else f"{reason}; {why}"
        if plan.mode == "slm_only":
            return Decision("slm", False, "mode slm_only", plan.threshold, conf), ""
        if not self._defers(conf):
            return Decision("slm", False, self._reason(conf), plan.threshold, conf), ""
        ok, why = self.c.llm_available()
        if ok:
            return Decision("llm", True, self._reason(conf), plan.threshold, conf), ""
        return Decision("slm", True, self._reason(conf), plan.threshold, conf), why

    def _record_slm(self, result: Result) -> None:
        self.slm_result = result
        self.slm_runs.append(result)
        self.slm_finished = True
        if result.finish_reason == "abort":  # stopped on purpose (early deferral): not a contract matter
            self.slm_parsed, self.slm_problem = None, "aborted"
        else:
            self.slm_parsed, self.slm_problem = check_contract(self.plan.fmt, result.text, result.finish_reason, result.error)

    async def _drain(self, iterator) -> None:
        """Consume an aborted SLM stream up to its FinishedEvent (for the token count)."""
        async for event in iterator:
            if isinstance(event, TokenEvent):
                self.slm_tokens += 1
            elif isinstance(event, FinishedEvent):
                self._record_slm(event.result)

    async def _run_slm_to_completion(self) -> None:
        """The SLM's full answer, for a degraded result when the LLM could not answer."""
        request = self._slm_request()
        self.slm_request = request
        self.slm_finished = False
        result = await self.c.slm.generate_async(request)
        self._record_slm(result)
        if self.reading is None:
            self.reading = result.confidence

    # -- the LLM -------------------------------------------------------------------------
    def _start_llm(self) -> None:
        self.llm_started = time.perf_counter()
        self.llm_task = asyncio.ensure_future(self._call_llm())

    async def _llm_events(self) -> AsyncIterator[LlmToken]:
        index = 0
        while True:
            item = await self.llm_queue.get()
            if item is None:
                return
            index += 1
            yield LlmToken(item, index)

    async def _call_llm(self) -> None:
        """Retries with backoff inside the deadline; the breaker sees every attempt's verdict."""
        cfg, plan, breaker = self.cfg, self.plan, self.c.breaker
        # Keep a little of the caller's time back, so a degraded answer can still reach it: every
        # attempt, retries included, ends by the same cut-off.
        left = plan.remaining()
        cutoff = None if left is None else plan.deadline - min(0.25, left / 10)

        def time_left() -> float | None:
            return None if cutoff is None else cutoff - time.monotonic()

        try:
            attempts = cfg.llm_retries + 1
            for attempt in range(attempts):
                remaining = time_left()
                if remaining is not None and remaining <= 0.01:
                    self.llm_error = LLMUnavailableError("the request's deadline passed before the LLM answered")
                    return
                if not breaker.allow():
                    refused = f"the LLM circuit breaker is {breaker.state}"
                    self.llm_error = LLMUnavailableError(f"{self.llm_error}; {refused}" if self.llm_error else refused)
                    return
                timeout = cfg.llm_timeout_s if remaining is None else min(cfg.llm_timeout_s, remaining)
                params = GenerationParams(
                    contract=plan.fmt, max_new_tokens=plan.max_new_tokens, temperature=cfg.llm_temperature,
                    request_id=f"{plan.request_id}-llm", timeout_s=timeout,
                )
                sent = 0
                try:
                    async for item in self.c.llm.stream(plan.messages, params):
                        if isinstance(item, Completion):
                            self.llm_completion = item
                        elif item:
                            sent += 1
                            self.llm_queue.put_nowait(item)
                    if self.llm_completion is None:
                        raise LLMUnavailableError("the LLM stream ended without a result")
                    breaker.record_success()  # it answered; whether the answer is usable is the contract's matter
                    done = self.llm_completion
                    self.llm_parsed, problem = check_contract(plan.fmt, done.text, done.finish_reason)
                    if self.llm_parsed is None:
                        self.llm_error = LLMContractError(problem)
                    return
                except LLMRequestError as err:
                    breaker.release()
                    self.llm_error = err
                    return
                except LLMUnavailableError as err:
                    breaker.record_failure()
                    self.llm_error = LLMUnavailableError(f"{err} (attempt {attempt + 1} of {attempts})")
                    if sent:  # tokens already reached the client: a retry would repeat them
                        return
                if attempt + 1 < attempts:
                    delay = min(cfg.retry_backoff_s * (2 ** attempt), cfg.retry_backoff_max_s)
                    remaining = time_left()
                    if remaining is not None:
                        delay = min(delay, max(remaining - 0.01, 0))
                    await asyncio.sleep(delay)
        except asyncio.CancelledError:
            breaker.release()
            raise
        except Exception as err:  # an unexpected client failure degrades this request only
            breaker.record_failure()
            self.llm_error = LLMUnavailableError(f"{type(err).__name__}: {err}")
        finally:
            self.llm_elapsed = time.perf_counter() - self.llm_started
            self.llm_queue.put_nowait(None)

    # -- the result ----------------------------------------------------------------------
    def _finish(self, degraded_reason: str = "") -> SolveResult:
        res, plan, cfg = self.result, self.plan, self.cfg
        runs = self.slm_runs  # every SLM run counts: an aborted one and any fallback run
        res.slm_prompt_tokens = sum(r.prompt_tokens for r in runs)
        res.slm_completion_tokens = sum(r.completion_tokens for r in runs)
        res.slm_latency_ms = sum(r.latency_s for r in runs) * 1000
        if self.reading is not None:
            res.confidence_sampled, res.confidence_expected = self.reading.sampled, self.reading.expected
        if self.decision is not None and self.decision.deferred:
            res.deferred, res.deferral_reason = True, self.decision.reason
        completion = self.llm_completion
        if self.llm_task is not None:
            res.llm_latency_ms = self.llm_elapsed * 1000
        if completion is not None:
            res.llm_prompt_tokens, res.llm_completion_tokens = completion.prompt_tokens, completion.completion_tokens
            res.llm_model = completion.model or res.llm_model
            res.llm_finish_reason, res.llm_tokens_estimated = completion.finish_reason, completion.estimated
        if self.slm_result is not None:
            res.slm_finish_reason = self.slm_result.finish_reason

        if self.llm_parsed is not None and not degraded_reason:
            res.answered_by, res.text = "llm", completion.text
            res.answer, res.reasoning = self.llm_parsed.answer, self.llm_parsed.reasoning
        else:
            slm, parsed = self.slm_result, self.slm_parsed
            res.answered_by, res.text = "slm", slm.text if slm else ""
            res.answer, res.reasoning = (parsed.answer, parsed.reasoning) if parsed else ("", "")
            if degraded_reason:
                res.degraded = True
                if parsed:
                    res.degraded_reason = f"{degraded_reason}; kept the SLM answer"
                else:
                    res.degraded_reason = f"{degraded_reason}; the SLM has no usable answer either ({self.slm_problem})"

        slm_cost, llm_cost = cfg.tier_costs(res.slm_prompt_tokens, res.slm_completion_tokens,
                                            res.llm_prompt_tokens, res.llm_completion_tokens)
        res.cost = slm_cost + llm_cost
        if completion is not None:
            res.llm_only_cost = llm_cost
        else:  # estimate: the SLM's last run priced at LLM rates (see the module docstring)
            last = self.slm_result
            res.llm_only_cost = cfg.tier_costs(0, 0, last.prompt_tokens, last.completion_tokens)[1] if last else 0.0
        res.latency_ms = (time.perf_counter() - self.started) * 1000
        return res

    async def cleanup(self) -> None:
        """Stop whatever still runs (the client went away, or an error)."""
        if self.slm_request is not None and not self.slm_finished:
            self.c.slm.abort(self.slm_request.request_id)
        for task in (self.llm_task, self.slm_drain):
            if task is not None and not task.done():
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
