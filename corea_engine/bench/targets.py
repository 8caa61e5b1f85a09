"""What a benchmark drives, one layer at a time, behind one interface:

    await target.solve(question, request_id) -> Sample     (raises on failure)
    target.error_kind(exc) -> str                          (how a failure is counted)
    await target.aclose()

ExecutorTarget: the bare executor (no routing): time to decision is the time to the confidence
event, and "deferred" is what the threshold would decide on that confidence.
CascadeTarget: the in-process Cascade (SLM executor + an LLM client), no gRPC.
GrpcTarget: a running `corea serve` through client.AsyncCoreaClient's SolveStream (time to the Decision event).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..policy import Policy
from .stats import Sample


@dataclass
class RequestOptions:
    """Per-request settings every target honours (None: the layer's default)."""

    contract: str = "json"
    max_new_tokens: int | None = None
    threshold: float | None = None
    mode: str | None = None  # cascade | slm_only | llm_only (cascade and grpc targets)
    timeout_s: float = 600.0
    # Bounds on the contract's free-text fields (shorter outputs, faster CPU runs). In process they
    # bound the format; a server takes them from its configuration (spawned: COREA_MAX_*_CHARS).
    max_reasoning_chars: int | None = None
    max_answer_chars: int | None = None

    def format(self):
        from ..contract import get_format

        return get_format(self.contract).bounded(max_reasoning_chars=self.max_reasoning_chars,
                                                 max_answer_chars=self.max_answer_chars)


class RequestFailed(RuntimeError):
    """A request that came back without a usable result; `kind` is how it is counted."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class Target:
    name = "target"

    async def solve(self, question: str, request_id: str) -> Sample:
        raise NotImplementedError

    def error_kind(self, err: Exception) -> str:
        return err.kind if isinstance(err, RequestFailed) else type(err).__name__

    async def aclose(self) -> None:
        pass


class ExecutorTarget(Target):
    name = "executor"

    def __init__(self, executor, options: RequestOptions):
        self.executor, self.options = executor, options
        self.threshold = 0.5 if options.threshold is None else options.threshold

    async def solve(self, question: str, request_id: str) -> Sample:
        from ..contract import build_messages
        from ..runtime.executor import ConfidenceEvent, FinishedEvent, Request, SamplingParams

        fmt = self.options.format()
        request = Request(messages=build_messages(question, fmt), contract=fmt, request_id=request_id,
                          sampling=SamplingParams(max_new_tokens=self.options.max_new_tokens))
        start = time.perf_counter()
        decision_s = confidence = result = None
        async for event in self.executor.submit(request):
            if isinstance(event, ConfidenceEvent) and decision_s is None:
                decision_s, confidence = time.perf_counter() - start, event.reading.expected
            elif isinstance(event, FinishedEvent):
                result = event.result
        if result.finish_reason in ("error", "abort"):
            raise RequestFailed(result.finish_reason, result.error or result.finish_reason)
        return Sample(time.perf_counter() - start, decision_s, deferred=Policy(self.threshold).defers(confidence, 0.0),
                      slm_tokens=result.completion_tokens)


class CascadeTarget(Target):
    name = "cascade"

    def __init__(self, cascade, options: RequestOptions):
        self.cascade, self.options = cascade, options

    async def solve(self, question: str, request_id: str) -> Sample:
        from ..cascade import Decision, Finished, SolveRequest

        o = self.options
        request = SolveRequest(question=question, request_id=request_id, threshold=o.threshold, mode=o.mode,
                               contract=o.contract, max_new_tokens=o.max_new_tokens, timeout_s=o.timeout_s)
        start = time.perf_counter()
        decision_s = result = None
        async for event in self.cascade.stream(request):
            if isinstance(event, Decision) and decision_s is None:
                decision_s = time.perf_counter() - start
            elif isinstance(event, Finished):
                result = event.result
        return Sample(time.perf_counter() - start, decision_s, deferred=result.deferred,
                      slm_tokens=result.slm_completion_tokens, llm_tokens=result.llm_completion_tokens)

    async def aclose(self) -> None:
        await self.cascade.close()


class GrpcTarget(Target):
    name = "grpc"

    def __init__(self, address: str, options: RequestOptions, *, tls=None, token: str | None = None):
        """tls (a server.tls.ClientTLS) and token: how to reach a secured server."""
        from ..client import AsyncCoreaClient

        if options.mode not in (None, "cascade", "slm_only", "llm_only"):
            raise ValueError(f"mode must be one of cascade, slm_only, llm_only, got {options.mode!r}")
        self.address, self.options = address, options
        # One channel (one HTTP/2 connection) multiplexes every in-flight call, as a service client would.
        self.client = AsyncCoreaClient(address, tls=tls, token=token, timeout_s=options.timeout_s)

    def request(self, question: str, request_id: str):
        from ..cascade import SolveRequest

        o = self.options
        return SolveRequest(question, request_id=request_id, threshold=o.threshold, mode=o.mode,
                            contract=o.contract, max_new_tokens=o.max_new_tokens)

    async def solve(self, question: str, request_id: str) -> Sample:
        start = time.perf_counter()
        decision_s = result = None
        async for event in self.client.stream(self.request(question, request_id)):
            kind = event.WhichOneof("event")
            if kind == "decision" and decision_s is None:
                decision_s = time.perf_counter() - start
            elif kind == "result":
                result = event.result
        if result is None:
            raise RequestFailed("NO_RESULT", "the stream ended without a result")
        return Sample(time.perf_counter() - start, decision_s, deferred=result.deferred,
                      slm_tokens=result.slm_tokens.completion_tokens, llm_tokens=result.llm_tokens.completion_tokens)

    def error_kind(self, err: Exception) -> str:
        code = getattr(err, "code", None)
        if callable(code):  # grpc.aio.AioRpcError: the canonical status name, as the C++ client counts it
            return code().name
        return super().error_kind(err)

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        await self.client.wait_ready(timeout_s)

    async def aclose(self) -> None:
        await self.client.close()
