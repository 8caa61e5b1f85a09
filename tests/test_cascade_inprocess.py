"""The Cascade object itself, in process (no gRPC): events, early deferral, cancellation."""

from __future__ import annotations

import asyncio
import time

import pytest

from cascade_servers import SMALL, stand_in_llm
from corea_engine.cascade import Cascade, CascadeConfig, ConfidenceKnown, Decision, Finished, LlmToken, SlmToken, SolveRequest
from corea_engine.escalation.base import GenerationParams, LLMUnavailableError
from corea_engine.escalation.local_llm import ExecutorLLM
from corea_engine.runtime.executor import Executor


class Recorded(Executor):
    """The real executor, keeping each request's stream so a test can read how the request ended."""

    def __init__(self, inner: Executor):
        self.inner, self.model_name, self.streams = inner, inner.model_name, []

    def submit(self, request):
        stream = self.inner.submit(request)
        self.streams.append(stream)
        return stream

    def abort(self, request_id: str) -> bool:
        return self.inner.abort(request_id)

    def load(self):
        return self.inner.load()

    def __getattr__(self, name):  # stats, running, tokenizer...: the real executor's
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def cascade(slm_executor):
    llm = stand_in_llm(slm_executor)
    yield Cascade(Recorded(slm_executor), ExecutorLLM(Recorded(llm)), CascadeConfig(**SMALL))
    llm.close()


def wait_idle(executor, limit_s=60.0):
    """The engine drops aborted rows at its next step; poll (bounded) until it has."""
    deadline = time.monotonic() + limit_s
    while executor.running and time.monotonic() < deadline:
        time.sleep(0.02)
    return executor.running


def test_early_deferral_aborts_the_slm_and_streams_the_llm(cascade, gsm8k_questions):
    async def run():
        return [e async for e in cascade.stream(SolveRequest(gsm8k_questions[16], threshold=1.0, contract="json_confidence_first"))]

    events = asyncio.run(run())
    kinds = [type(e) for e in events]
    d = kinds.index(Decision)
    assert kinds.index(ConfidenceKnown) == d - 1 and SlmToken not in kinds[d:] and kinds[-1] is Finished
    assert LlmToken in kinds[d:]
    result = events[-1].result
    assert result.deferred and result.answered_by == "llm" and result.slm_completion_tokens <= 10
    assert result.confidence_expected is not None and result.llm_completion_tokens > 0
    assert result.cost > result.llm_only_cost > 0  # the SLM's few tokens are the cascade's overhead here
    (slm,) = cascade.slm.streams[-1:]
    assert slm.wait(timeout=0).finish_reason == "abort"  # the executor stopped it; it did not run out


def test_a_client_that_goes_away_aborts_its_slm_request(cascade, gsm8k_questions):
    async def run():
        stream = cascade.stream(SolveRequest(gsm8k_questions[17], mode="slm_only"))
        first = await stream.__anext__()
        await stream.aclose()  # what grpc does when the caller cancels
        return first

    assert isinstance(asyncio.run(run()), SlmToken)
    # The abort reached the engine: the request ended as aborted, not by running to its end.
    result = cascade.slm.streams[-1].wait(timeout=300)
    assert result.finish_reason == "abort" and result.confidence is None, result


def test_the_in_process_llm_stops_at_the_calls_deadline(cascade):
    """The stand-in LLM tier keeps GenerationParams.timeout_s as a gRPC client would: it gives up
    and aborts its request instead of running to the end."""
    # 3 s: past the prefill even on a loaded machine (an abort that lands during a prefill is #15's).
    params = GenerationParams(max_new_tokens=400, timeout_s=3.0, request_id="slow-llm")

    async def run():
        return [item async for item in cascade.llm.stream([{"role": "user", "content": "Write a long story about a dragon."}], params)]

    with pytest.raises(LLMUnavailableError, match="did not answer within 3.00 s"):
        asyncio.run(run())
    result = cascade.llm.executor.streams[-1].wait(timeout=300)
    assert result.finish_reason == "abort" and result.completion_tokens < 400, result


class IgnoresTheFormat(ExecutorLLM):
    """A real model behind an endpoint that drops the contract: it answers in free text."""

    async def stream(self, messages, params):
        from dataclasses import replace

        async for item in super().stream(messages[-1:], replace(params, contract=None, max_new_tokens=24)):
            yield item


@pytest.mark.parametrize("mode,max_new,llm_finish", [
    ("llm_only", 4, "length"), ("llm_only", 9, "length"), ("cascade", 6, "length"), ("llm_only", None, "free"),
])
def test_output_outside_the_contract_is_never_served_as_an_answer(cascade, slm_executor, gsm8k_questions, mode, max_new, llm_finish):
    """Cut at the token cap or free text, from any tier: degraded with the reason and the finish
    reason, and the metrics count it degraded, not accepted."""
    from corea_engine.server.metrics import CoreaMetrics

    c = cascade
    if llm_finish == "free":
        c = Cascade(slm_executor, IgnoresTheFormat(cascade.llm.executor), cascade.config)
    question = "What is 17 * 23?" if max_new == 4 else gsm8k_questions[18]
    result = asyncio.run(c.solve(SolveRequest(question, mode=mode, max_new_tokens=max_new, threshold=1.0)))
    assert result.degraded and "does not satisfy the json contract" in result.degraded_reason, result
    assert result.llm_completion_tokens > 0 and result.llm_finish_reason in (("stop", "length") if llm_finish == "free" else ("length",))
    assert f"finish_reason {result.llm_finish_reason}" in result.degraded_reason and result.answered_by == "slm"
    if max_new is not None:  # the SLM, cut by the same cap, has no answer either
        assert result.answer == "" and result.slm_finish_reason == "length" and "no usable answer either" in result.degraded_reason
    else:  # the SLM's answer under the contract is kept, never the LLM's free text
        assert "kept the SLM answer" in result.degraded_reason and result.answer and result.slm_finish_reason == "confidence"
    metrics = CoreaMetrics()
    metrics.observe("Solve", result, (0.0, 0.0))
    assert metrics.requests.labels("Solve", "degraded")._value.get() == 1
    assert metrics.requests.labels("Solve", "accepted")._value.get() == 0


@pytest.mark.parametrize("max_new", [5, 12])
def test_slm_only_output_cut_at_the_cap_is_degraded(cascade, gsm8k_questions, max_new):
    result = asyncio.run(cascade.solve(SolveRequest(gsm8k_questions[19], mode="slm_only", max_new_tokens=max_new)))
    assert result.degraded and result.answer == "" and result.slm_finish_reason == "length"
    assert "SLM output unusable" in result.degraded_reason and "finish_reason length" in result.degraded_reason


@pytest.mark.parametrize("mode,timeout_s", [("slm_only", 0.8), ("cascade", 2.0), ("llm_only", 1.5)])
def test_a_deadline_stops_every_tier_wherever_the_request_is(cascade, slm_executor, mode, timeout_s):
    """timeout_s passes during a long prefill (SLM, or the in-process LLM): DeadlineExceeded, and
    the executors stop within a chunk instead of running to the end."""
    from corea_engine.cascade import DeadlineExceeded
    from corea_engine.runtime import torch_executor

    question = "A farmer counts the sheep that jump over the fence by the river before dusk. " * 85
    executors = [slm_executor, cascade.llm.executor]
    total_chunks = len(slm_executor.tokenizer.encode(question)) // torch_executor.PREFILL_CHUNK_TOKENS
    chunks = [e.stats.prefill_chunks for e in executors]
    with pytest.raises(DeadlineExceeded, match="deadline"):
        asyncio.run(cascade.solve(SolveRequest(question, mode=mode, threshold=1.0, timeout_s=timeout_s)))
    for executor, before in zip(executors, chunks):
        assert wait_idle(executor) == 0 and executor.stats.prefill_chunks - before < total_chunks
