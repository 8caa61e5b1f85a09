"""corea.v1 messages <-> the cascade's dataclasses (one place for the mapping)."""

from __future__ import annotations

from ..cascade import (
    ConfidenceKnown, Decision, Finished, InvalidSolveRequest, LlmToken, SlmToken, SolveRequest, SolveResult, TierToken, TierTrace,
)
from ..protos import corea_pb2 as pb

_MODES = {pb.ROUTING_MODE_UNSPECIFIED: None, pb.ROUTING_MODE_CASCADE: "cascade", pb.ROUTING_MODE_SLM_ONLY: "slm_only", pb.ROUTING_MODE_LLM_ONLY: "llm_only"}
_SOURCES = {pb.CONFIDENCE_SOURCE_UNSPECIFIED: None, pb.CONFIDENCE_SOURCE_SAMPLED: "sampled", pb.CONFIDENCE_SOURCE_EXPECTED: "expected"}
_MODE_ENUM = {v: k for k, v in _MODES.items() if v}
_SOURCE_ENUM = {v: k for k, v in _SOURCES.items() if v}
_TIER_ENUM = {"slm": pb.TIER_SLM, "llm": pb.TIER_LLM}


def _tier_enum(name: str) -> int:
    """slm, llm, or a middle tier's name (TIER_MIDDLE; its name travels beside it)."""
    return _TIER_ENUM.get(name, pb.TIER_MIDDLE if name else pb.TIER_UNSPECIFIED)


def _opt(msg, name: str):
    return getattr(msg, name) if msg.HasField(name) else None


def _to_trace(t: TierTrace) -> pb.TierTrace:
    msg = pb.TierTrace(tier_index=t.tier_index, tier=t.tier, model=t.model, decision=t.decision, reason=t.reason,
                       tokens=pb.TokenUsage(prompt_tokens=t.prompt_tokens, completion_tokens=t.completion_tokens),
                       latency_ms=t.latency_ms, cost=t.cost, finish_reason=t.finish_reason)
    for name in ("confidence", "confidence_calibrated", "threshold"):
        if getattr(t, name) is not None:
            setattr(msg, name, getattr(t, name))
    return msg


def _from_trace(m: pb.TierTrace) -> TierTrace:
    return TierTrace(m.tier_index, m.tier, m.model, m.decision, m.reason, _opt(m, "confidence"),
                     _opt(m, "confidence_calibrated"), _opt(m, "threshold"), m.tokens.prompt_tokens,
                     m.tokens.completion_tokens, m.latency_ms, m.cost, m.finish_reason)


def to_solve_request(msg: pb.SolveRequest, timeout_s: float | None = None) -> SolveRequest:
    """Raises InvalidSolveRequest for enum values this server does not know."""
    if msg.mode not in _MODES:
        raise InvalidSolveRequest(f"unknown mode {msg.mode}; known: {sorted(_MODES)}")
    if msg.confidence_source not in _SOURCES:
        raise InvalidSolveRequest(f"unknown confidence_source {msg.confidence_source}; known: {sorted(_SOURCES)}")
    return SolveRequest(
        question=msg.question,
        request_id=msg.request_id,
        threshold=msg.threshold if msg.HasField("threshold") else None,
        confidence_source=_SOURCES[msg.confidence_source],
        mode=_MODES[msg.mode],
        contract=msg.contract or None,
        max_new_tokens=msg.max_new_tokens or None,
        timeout_s=timeout_s,
        thresholds=tuple(msg.thresholds) or None,
    )


def from_solve_request(req: SolveRequest) -> pb.SolveRequest:
    msg = pb.SolveRequest(question=req.question, request_id=req.request_id, max_new_tokens=req.max_new_tokens or 0)
    if req.threshold is not None:
        msg.threshold = req.threshold
    if req.thresholds:
        msg.thresholds.extend(req.thresholds)
    if req.mode:
        msg.mode = _MODE_ENUM[req.mode]
    if req.confidence_source:
        msg.confidence_source = _SOURCE_ENUM[req.confidence_source]
    if req.contract:
        msg.contract = req.contract if isinstance(req.contract, str) else req.contract.name
    return msg


def to_response(r: SolveResult) -> pb.SolveResponse:
    msg = pb.SolveResponse(
        request_id=r.request_id, answer=r.answer, reasoning=r.reasoning, threshold=r.threshold,
        confidence_source=_SOURCE_ENUM[r.confidence_source], mode=_MODE_ENUM[r.mode],
        answered_by=_tier_enum(r.answered_by), deferred=r.deferred,
        deferral_reason=r.deferral_reason, degraded=r.degraded, degraded_reason=r.degraded_reason,
        slm_tokens=pb.TokenUsage(prompt_tokens=r.slm_prompt_tokens, completion_tokens=r.slm_completion_tokens),
        llm_tokens=pb.TokenUsage(prompt_tokens=r.llm_prompt_tokens, completion_tokens=r.llm_completion_tokens,
                                 estimated=r.llm_tokens_estimated),
        cost=r.cost, llm_only_cost=r.llm_only_cost, slm_latency_ms=r.slm_latency_ms,
        llm_latency_ms=r.llm_latency_ms, latency_ms=r.latency_ms, slm_model=r.slm_model,
        llm_model=r.llm_model, text=r.text, slm_finish_reason=r.slm_finish_reason, llm_finish_reason=r.llm_finish_reason,
        answered_tier=r.answered_tier, answered_tier_index=r.answered_tier_index, trace=[_to_trace(t) for t in r.trace],
    )
    if r.confidence_sampled is not None:
        msg.confidence_sampled = r.confidence_sampled
    if r.confidence_expected is not None:
        msg.confidence_expected = r.confidence_expected
    if r.confidence_calibrated is not None:
        msg.confidence_calibrated = r.confidence_calibrated
    if r.tie_draw is not None:
        msg.tie_draw = r.tie_draw
    return msg


def from_response(msg: pb.SolveResponse) -> SolveResult:
    tiers = {v: k for k, v in _TIER_ENUM.items()}
    return SolveResult(
        request_id=msg.request_id, answer=msg.answer, reasoning=msg.reasoning,
        confidence_sampled=msg.confidence_sampled if msg.HasField("confidence_sampled") else None,
        confidence_expected=msg.confidence_expected if msg.HasField("confidence_expected") else None,
        threshold=msg.threshold, confidence_source=_SOURCES.get(msg.confidence_source) or "expected",
        mode=_MODES.get(msg.mode) or "cascade",
        answered_by=tiers.get(msg.answered_by, msg.answered_tier if msg.answered_by == pb.TIER_MIDDLE else ""),
        deferred=msg.deferred, deferral_reason=msg.deferral_reason, degraded=msg.degraded,
        degraded_reason=msg.degraded_reason, slm_prompt_tokens=msg.slm_tokens.prompt_tokens,
        slm_completion_tokens=msg.slm_tokens.completion_tokens, llm_prompt_tokens=msg.llm_tokens.prompt_tokens,
        llm_completion_tokens=msg.llm_tokens.completion_tokens, cost=msg.cost, llm_only_cost=msg.llm_only_cost,
        slm_latency_ms=msg.slm_latency_ms, llm_latency_ms=msg.llm_latency_ms, latency_ms=msg.latency_ms,
        slm_model=msg.slm_model, llm_model=msg.llm_model, text=msg.text, slm_finish_reason=msg.slm_finish_reason,
        llm_finish_reason=msg.llm_finish_reason, llm_tokens_estimated=msg.llm_tokens.estimated,
        confidence_calibrated=msg.confidence_calibrated if msg.HasField("confidence_calibrated") else None,
        tie_draw=msg.tie_draw if msg.HasField("tie_draw") else None,
        answered_tier=msg.answered_tier, answered_tier_index=msg.answered_tier_index,
        trace=[_from_trace(t) for t in msg.trace],
    )


def to_event(event) -> pb.SolveEvent:
    if isinstance(event, SlmToken):
        return pb.SolveEvent(slm_token=pb.TokenChunk(text=event.text, index=event.index))
    if isinstance(event, LlmToken):
        return pb.SolveEvent(llm_token=pb.TokenChunk(text=event.text, index=event.index))
    if isinstance(event, TierToken):
        return pb.SolveEvent(tier_token=pb.TierTokenChunk(text=event.text, index=event.index,
                                                          tier_index=event.tier_index, tier_name=event.tier_name))
    if isinstance(event, ConfidenceKnown):
        return pb.SolveEvent(confidence=pb.ConfidenceKnown(
            sampled=event.sampled, expected=event.expected, distribution=event.distribution, slm_tokens=event.slm_tokens,
            tier_index=event.tier_index, tier_name=event.tier_name))
    if isinstance(event, Decision):
        return pb.SolveEvent(decision=pb.Decision(
            tier=_tier_enum(event.tier), deferred=event.deferred, reason=event.reason, threshold=event.threshold,
            confidence=event.confidence if event.confidence is not None else 0.0, tier_index=event.tier_index,
            tier_name=event.tier_name, decided_by=event.decided_by))
    if isinstance(event, Finished):
        return pb.SolveEvent(result=to_response(event.result))
    raise TypeError(f"not a cascade event: {event!r}")
