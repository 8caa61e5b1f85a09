"""The Cascade object itself, in process (no gRPC): events, early deferral, cancellation."""

from __future__ import annotations

import asyncio

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


@pytest.fixture(scope="module")
def cascade(slm_executor):
    llm = stand_in_llm(slm_executor)
    yield Cascade(Recorded(slm_executor), ExecutorLLM(Recorded(llm)), CascadeConfig(**SMALL))
    llm.close()


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
