"""The Cascade object itself, in process (no gRPC): events, early deferral, cancellation."""

from __future__ import annotations

import asyncio
import time

import pytest

from cascade_servers import SMALL, stand_in_llm
from corea_engine.cascade import Cascade, CascadeConfig, ConfidenceKnown, Decision, Finished, LlmToken, SlmToken, SolveRequest
from corea_engine.escalation.local_llm import ExecutorLLM


@pytest.fixture(scope="module")
def cascade(slm_executor):
    llm = stand_in_llm(slm_executor)
    yield Cascade(slm_executor, ExecutorLLM(llm), CascadeConfig(**SMALL))
    llm.close()


def wait_idle(executor, limit_s=60.0):
    """The engine drops aborted rows at its next step; poll (bounded) until it has."""
    deadline = time.monotonic() + limit_s
    while executor.running and time.monotonic() < deadline:
        time.sleep(0.02)
    return executor.running


def test_early_deferral_aborts_the_slm_and_streams_the_llm(cascade, slm_executor, gsm8k_questions):
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
    assert wait_idle(slm_executor) == 0


def test_a_client_that_goes_away_aborts_its_slm_request(cascade, slm_executor, gsm8k_questions):
    async def run():
        stream = cascade.stream(SolveRequest(gsm8k_questions[17], mode="slm_only"))
        first = await stream.__anext__()
        await stream.aclose()  # what grpc does when the caller cancels
        return first

    assert isinstance(asyncio.run(run()), SlmToken)
    assert wait_idle(slm_executor) == 0
