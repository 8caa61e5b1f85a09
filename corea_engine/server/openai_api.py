"""OpenAI's chat-completions API <-> the cascade's SolveRequest / SolveResult (one place for the mapping).

Request: `messages` must hold one question: one user message, optionally after system/developer
messages (their text is put before the question). Per-request policy comes from the model name
(RouteLLM's way) and from extra body fields (`extra_body` in the openai SDK):

    model            corea | corea-slm-only | corea-llm-only | corea-t<threshold>, e.g. corea-t0.7
    threshold        0..1                      (overrides the server default; must agree with the model name)
    thresholds       [0..1, ...]               (N tiers: one per tier but the last; threshold overrides the first)
    mode             cascade | slm_only | llm_only
    confidence_source expected | sampled
    contract         json | tags | json_confidence_first | tags_confidence_first
    max_completion_tokens / max_tokens -> the token budget of each tier

Refused with a named reason until supported: n > 1, tools/functions, logprobs, image/audio/file
parts, multi-turn conversations. Sampling knobs (temperature, top_p, seed, stop, penalties, ...)
are accepted but not applied: the tiers decode with the server's settings (greedy by default,
which the confidence calibration assumes); the response lists them under corea.ignored_params.

Response: a standard `chat.completion` whose message.content is the answer and whose
message.reasoning_content is the answering tier's text under the contract (reasoning, answer,
confidence; the field reasoning servers use). `usage` sums every tier; the `corea` object holds
every SolveResult field (as the gRPC SolveResponse has them: answered_tier, answered_tier_index
and the per-tier `trace` included) plus the confidence the decision used, the time to the decision
and the ignored parameters.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..cascade import Decision, SolveRequest, SolveResult

MODEL = "corea"
MODELS = {MODEL: {}, f"{MODEL}-slm-only": {"mode": "slm_only"}, f"{MODEL}-llm-only": {"mode": "llm_only"}}
_THRESHOLD_MODEL = re.compile(rf"{MODEL}-t(.+)")
POLICY_FIELDS = ("threshold", "thresholds", "mode", "confidence_source", "contract")
IGNORED_PARAMS = ("temperature", "top_p", "seed", "stop", "frequency_penalty", "presence_penalty", "logit_bias",
                  "user", "response_format", "metadata", "store", "service_tier", "reasoning_effort",
                  "parallel_tool_calls", "top_logprobs", "safety_identifier", "prompt_cache_key")


class APIError(Exception):
    """An OpenAI error object with its HTTP status: {"error": {"message", "type", "param", "code"}}."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             413: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable", 500: "server_error"}

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}


# ------------------------------------------------------------------------------ the request
class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_call_id, ... (refused by role below when they matter)

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The body of POST /v1/chat/completions. Unknown fields are refused (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    messages: list[_Message]
    stream: bool = False
    stream_options: _StreamOptions | None = None
    n: int | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    tool_choice: Any = None
    logprobs: bool | None = None
    # the corea extension (policy per request)
    threshold: float | None = None
    thresholds: tuple[float, ...] | None = None
    mode: str | None = None
    confidence_source: str | None = None
    contract: str | None = None
    # accepted, not applied (see the module docstring)
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    response_format: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None
    reasoning_effort: str | None = None
    parallel_tool_calls: bool | None = None
    top_logprobs: int | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None


@dataclasses.dataclass
class ChatCall:
    """A parsed chat request: what the cascade is asked, and how to answer."""

    solve: SolveRequest
    model: str
    stream: bool
    include_usage: bool
    ignored_params: list[str]


def parse_chat_request(body: bytes, request_id: str) -> ChatCall:
    """The body as a ChatCall; APIError 400 (bad input) or 404 (unknown model) naming the field."""
    try:
        req = ChatCompletionRequest.model_validate_json(body)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        if first["type"] == "extra_forbidden":
            raise APIError(400, f"unknown parameter '{where}'", code="unknown_parameter", param=where) from None
        if first["type"] == "json_invalid":
            raise APIError(400, f"the body is not valid JSON ({first['msg']})", code="invalid_json") from None
        raise APIError(400, f"{where}: {first['msg']}" if where else first["msg"], code="invalid_value", param=where) from None
    policy = _policy_of(req)
    if req.n is not None and req.n != 1:
        raise APIError(400, f"n={req.n}: the cascade returns one choice per request (n > 1 is not supported yet)",
                       code="unsupported_parameter", param="n")
    if req.tools or req.functions or req.tool_choice not in (None, "none"):
        raise APIError(400, "tools and function calling are not supported yet", code="unsupported_parameter",
                       param="tools" if req.tools else "functions" if req.functions else "tool_choice")
    if req.logprobs:
        raise APIError(400, "logprobs are not supported yet", code="unsupported_parameter", param="logprobs")
    return ChatCall(
        solve=SolveRequest(question=_question(req.messages), request_id=request_id,
                           max_new_tokens=req.max_completion_tokens or req.max_tokens, **policy),
        model=req.model, stream=req.stream,
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        ignored_params=[name for name in IGNORED_PARAMS if getattr(req, name) is not None],
    )


def _policy_of(req: ChatCompletionRequest) -> dict:
    """Policy from the model name, then the body's fields; they may add to each other, not contradict."""
    if req.model in MODELS:
        policy = dict(MODELS[req.model])
    elif (m := _THRESHOLD_MODEL.fullmatch(req.model)) and _is_number(m.group(1)):
        threshold = float(m.group(1))
        if not 0.0 <= threshold <= 1.0:  # named here: the caller wrote a model, not a threshold field
            raise APIError(400, f"the model '{req.model}' asks for threshold {threshold:g}; the threshold in "
                                f"{MODEL}-t<threshold> must be in [0, 1] (e.g. {MODEL}-t0.7)",
                           code="invalid_value", param="model")
        policy = {"threshold": threshold}
    else:
        raise APIError(404, f"the model '{req.model}' does not exist; this server serves {', '.join(MODELS)} "
                            f"and {MODEL}-t<threshold> (e.g. {MODEL}-t0.7)", code="model_not_found", param="model")
    for name in POLICY_FIELDS:
        value = getattr(req, name)
        if value is None:
            continue
        if name in policy and policy[name] != value:
            raise APIError(400, f"{name}={value!r} contradicts the model '{req.model}' ({name}={policy[name]!r})",
                           code="invalid_value", param=name)
        policy[name] = value
    return policy


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _question(messages: list[_Message]) -> str:
    if not messages:
        raise APIError(400, "messages is empty: send one user message with the question", code="invalid_value",
                       param="messages")
    parts = []
    for i, message in enumerate(messages):
        text = _text(message.content, f"messages[{i}].content")
        last = i == len(messages) - 1
        if message.role in ("system", "developer") and not last:
            parts.append(text)
        elif message.role == "user" and last:
            parts.append(text)
        else:
            raise APIError(400, f"messages[{i}] ({message.role}): the cascade answers one question; send one user "
                                "message, optionally after system messages (conversations are not supported yet)",
                           code="unsupported_parameter", param=f"messages[{i}]")
    return "\n\n".join(p for p in parts if p)


def _text(content, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind != "text" or not isinstance(part.get("text"), str):
            what = {"image_url": "images", "input_audio": "audio", "file": "files"}.get(kind, f"content parts of type {kind!r}")
            raise APIError(400, f"{where}[{j}]: {what} are not supported yet (text only)",
                           code="unsupported_parameter", param=f"{where}[{j}]")
        texts.append(part["text"])
    return "".join(texts)


# ------------------------------------------------------------------------------ the response
def extension(result: SolveResult, time_to_decision_ms: float | None, ignored_params: list[str]) -> dict:
    """The `corea` object: every SolveResult field, the confidence the decision used, and what HTTP adds."""
    return {**dataclasses.asdict(result), "confidence": result.confidence,
            "time_to_decision_ms": time_to_decision_ms, "ignored_params": ignored_params}


def usage(result: SolveResult) -> dict:
    """Every tier summed (each tier's own counts are in the extension's trace)."""
    prompt = result.slm_prompt_tokens + result.llm_prompt_tokens
    completion = result.slm_completion_tokens + result.llm_completion_tokens
    if result.trace:
        prompt, completion = sum(t.prompt_tokens for t in result.trace), sum(t.completion_tokens for t in result.trace)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def finish_reason(result: SolveResult) -> str:
    """OpenAI's: "length" when the answering tier was cut at its token cap, else "stop"."""
    tier = result.llm_finish_reason if result.answered_by == "llm" else result.slm_finish_reason
    answering = [t for t in result.trace if t.tier_index == result.answered_tier_index]
    if answering:
        tier = answering[-1].finish_reason
    return "length" if tier == "length" else "stop"


def completion(call: ChatCall, result: SolveResult, created: int, time_to_decision_ms: float | None) -> dict:
    return {
        "id": f"chatcmpl-{result.request_id}", "object": "chat.completion", "created": created, "model": call.model,
        "choices": [{"index": 0, "finish_reason": finish_reason(result), "logprobs": None,
                     "message": {"role": "assistant", "content": result.answer, "reasoning_content": result.text}}],
        "usage": usage(result),
        MODEL: extension(result, time_to_decision_ms, call.ignored_params),
    }


def decision_headers(result: SolveResult) -> dict[str, str]:
    """The decision for proxies' logs: x-corea-* response headers."""
    conf = result.confidence
    return {
        "x-corea-request-id": result.request_id, "x-corea-tier": result.answered_by,
        "x-corea-tier-name": result.answered_tier, "x-corea-tier-index": str(result.answered_tier_index),
        "x-corea-deferred": str(result.deferred).lower(), "x-corea-degraded": str(result.degraded).lower(),
        "x-corea-confidence": "" if conf is None else f"{conf:.4f}", "x-corea-threshold": f"{result.threshold:g}",
        "x-corea-confidence-source": result.confidence_source, "x-corea-mode": result.mode,
        "x-corea-cost": f"{result.cost:.8f}",
    }


class ChunkWriter:
    """Server-sent events of one streamed completion, in OpenAI's chat.completion.chunk format."""

    def __init__(self, call: ChatCall, created: int | None = None):
        self.call = call
        self.created = int(time.time()) if created is None else created
        self.id = f"chatcmpl-{call.solve.request_id}"

    def chunk(self, delta: dict | None = None, finish_reason: str | None = None, **extra) -> bytes:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
        return self.event({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                           "model": self.call.model, "choices": choices, **extra})

    def decision(self, decision: Decision, confidence_sampled: float | None, confidence_expected: float | None) -> bytes:
        """Before the answering tier's tokens: which tier answers, and why."""
        return self.chunk({}, **{MODEL: {"decision": {
            "tier": decision.tier, "tier_index": decision.tier_index, "tier_name": decision.tier_name,
            "decided_by": decision.decided_by, "deferred": decision.deferred, "reason": decision.reason,
            "threshold": decision.threshold, "confidence": decision.confidence,
            "confidence_sampled": confidence_sampled, "confidence_expected": confidence_expected}}})

    def finish(self, result: SolveResult, time_to_decision_ms: float | None) -> list[bytes]:
        """The answer, the final chunk with the whole result, the usage chunk if asked, [DONE]."""
        events = [self.chunk({"content": result.answer}),
                  self.chunk({}, finish_reason(result), **{MODEL: extension(result, time_to_decision_ms, self.call.ignored_params)})]
        if self.call.include_usage:
            events.append(self.chunk(None, usage=usage(result)))
        return [*events, DONE]

    @staticmethod
    def event(data: dict) -> bytes:
        return b"data: " + _json(data) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def _json(data: dict) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
