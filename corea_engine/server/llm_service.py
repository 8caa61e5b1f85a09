"""corea.v1.LLM over any Executor: the escalation tier as a plain generation service.

On the embedded default model this is a STAND-IN for a real LLM (the same 135M model that
plays the SLM): it exercises the protocol, deadlines and faults, not answer quality.

The deadline is the sooner of the gRPC deadline and deadline_ms; when it passes the executor
request is aborted and the call ends DEADLINE_EXCEEDED. A cancelled call aborts its request.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc

from ..contract import UnknownFormatError, get_format
from ..protos import llm_pb2, llm_pb2_grpc
from ..runtime.executor import Executor, ExecutorError, FinishedEvent, InvalidRequestError, Request, SamplingParams, TokenEvent


class LLMService(llm_pb2_grpc.LLMServicer):
    def __init__(self, executor: Executor):
        self.executor = executor
        self.calls = 0  # requests received (tests count them to prove slm_only never calls)

    # -- the two RPCs --------------------------------------------------------------------
    async def Generate(self, request, context):
        async for item in self._run(request, context):
            if isinstance(item, llm_pb2.GenerateResponse):
                return item
        await context.abort(grpc.StatusCode.INTERNAL, "generation ended without a result")

    async def GenerateStream(self, request, context):
        async for item in self._run(request, context):
            if isinstance(item, llm_pb2.GenerateResponse):
                yield llm_pb2.GenerateChunk(result=item)
            else:
                yield llm_pb2.GenerateChunk(text=item)

    # -- shared ----------------------------------------------------------------------------
    def to_request(self, msg: llm_pb2.GenerateRequest) -> Request:
        """Raises InvalidRequestError naming the bad field."""
        contract = None
        if msg.contract:
            try:
                contract = get_format(msg.contract).bounded(
                    max_reasoning_chars=msg.max_reasoning_chars or None, max_answer_chars=msg.max_answer_chars or None)
            except UnknownFormatError as err:
                raise InvalidRequestError(str(err)) from None
        if msg.messages and msg.prompt:
            raise InvalidRequestError("give messages or prompt, not both")
        sampling = SamplingParams(
            temperature=msg.temperature, top_p=msg.top_p or 1.0,
            seed=msg.seed if msg.HasField("seed") else None, max_new_tokens=msg.max_new_tokens or None,
        )
        return Request(
            messages=[{"role": m.role, "content": m.content} for m in msg.messages] or None,
            prompt=msg.prompt or None,
            contract=contract,
            sampling=sampling,
            stop_at_confidence=True,
            # Our own id: two callers may send the same one, and abort() goes by id.
            request_id=f"{msg.request_id or 'gen'}-{uuid.uuid4().hex[:8]}",
        )

    async def _run(self, msg, context):
        self.calls += 1
        started = time.perf_counter()
        try:
            request = self.to_request(msg)
            stream = self.executor.submit(request)
        except InvalidRequestError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        except ExecutorError as err:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(err))
        timeout = context.time_remaining()
        if msg.deadline_ms:
            timeout = msg.deadline_ms / 1000 if timeout is None else min(timeout, msg.deadline_ms / 1000)
        stops = [s for s in msg.stop if s]
        hold = max((len(s) for s in stops), default=1) - 1  # a stop string may still be forming
        text, sent, cut, finished, result = "", 0, None, False, None
        try:
            async with asyncio.timeout(timeout):
                async for event in stream:
                    if isinstance(event, TokenEvent) and event.text and cut is None:
                        text += event.text
                        cut = _first_stop(text, stops)
                        if cut is not None:
                            self.executor.abort(request.request_id)
                        end = cut if cut is not None else len(text) - hold
                        if end > sent:
                            yield text[sent:end]
                            sent = end
                    elif isinstance(event, FinishedEvent):
                        finished, result = True, event.result
        except TimeoutError:
            self.executor.abort(request.request_id)
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"generation did not finish within {timeout:.3f} s")
        finally:
            if not finished:
                self.executor.abort(request.request_id)
        if result.finish_reason == "error":
            await context.abort(grpc.StatusCode.INTERNAL, f"generation failed: {result.error}")
        if result.finish_reason == "abort" and cut is None:  # the executor is shutting down
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the model runtime stopped this request")
        out_text = result.text if cut is None else text[:cut]
        if cut is None and len(out_text) > sent:
            yield out_text[sent:]  # the held-back tail (and any forced suffix)
        finish = "stop" if cut is not None or result.finish_reason == "confidence" else result.finish_reason
        yield llm_pb2.GenerateResponse(
            request_id=msg.request_id, text=out_text, finish_reason=finish, prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens, model=self.executor.model_name,
            latency_ms=(time.perf_counter() - started) * 1000,
        )


def _first_stop(text: str, stops: list[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None
