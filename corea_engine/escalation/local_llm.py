"""An Executor in this process as the LLM tier (a stand-in: no network, no gRPC)."""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

from ..runtime.executor import Executor, FinishedEvent, InvalidRequestError, Request, SamplingParams, TokenEvent
from .base import Completion, EscalationClient, GenerationParams, LLMRequestError, LLMUnavailableError


class ExecutorLLM(EscalationClient):
    def __init__(self, executor: Executor):
        self.executor = executor
        self.model_name = executor.model_name

    async def stream(self, messages: list[dict], params: GenerationParams) -> AsyncIterator[str | Completion]:
        request = Request(
            messages=messages, contract=params.contract,
            sampling=SamplingParams(temperature=params.temperature, max_new_tokens=params.max_new_tokens),
            stop_at_confidence=True, request_id=params.request_id or f"llm-{time.monotonic_ns()}",
        )
        try:
            stream = await self.executor.submit_async(request)  # tokenizing, grammar compile: off the loop
        except InvalidRequestError as err:
            raise LLMRequestError(str(err)) from None
        finished = False
        events = stream.__aiter__()
        loop = asyncio.get_running_loop()
        deadline = None if params.timeout_s is None else loop.time() + params.timeout_s
        try:
            while True:
                try:  # the call's deadline, as a gRPC client would enforce it
                    wait = None if deadline is None else max(deadline - loop.time(), 0)
                    event = await asyncio.wait_for(events.__anext__(), wait)
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    raise LLMUnavailableError(f"the local LLM did not answer within {params.timeout_s:.2f} s") from None
                if isinstance(event, TokenEvent) and event.text:
                    yield event.text
                elif isinstance(event, FinishedEvent):
                    finished = True
                    r = event.result
                    if r.finish_reason in ("error", "abort"):
                        raise LLMUnavailableError(f"the local LLM ended with {r.finish_reason}: {r.error or ''}".strip())
                    yield Completion(r.text, r.prompt_tokens, r.completion_tokens, self.model_name,
                                     "stop" if r.finish_reason == "confidence" else r.finish_reason, r.latency_s)
        finally:
            if not finished:
                self.executor.abort(request.request_id)

    async def probe(self, timeout_s: float = 1.0) -> str | None:
        return "the local LLM runtime is closed" if getattr(self.executor, "closed", False) else None
