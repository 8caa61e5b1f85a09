"""The LLM server goes away mid-run and comes back: degraded answers with a reason, then recovery.

The cascade always defers here (threshold 1), retries once with a short backoff and opens its
circuit breaker after two consecutive failures, half-opening after one second.
"""

from __future__ import annotations

import time

import grpc
import pytest

from cascade_servers import corea_server, free_port, llm_server, stand_in_llm, worker_running
from corea_engine.protos import corea_pb2, corea_pb2_grpc

FAULTS = dict(threshold=1.0, llm_retries=1, retry_backoff_s=0.05, breaker_failures=2, breaker_cooldown_s=1.0)


@pytest.fixture(scope="module")
def rig(slm_executor):
    llm_executor = stand_in_llm(slm_executor)
    port = free_port()
    llm = llm_server(llm_executor, port)
    corea = corea_server(slm_executor, f"127.0.0.1:{port}", **FAULTS)
    channel = grpc.insecure_channel(corea.address)
    state = {"llm": llm}
    yield state, port, llm_executor, corea_pb2_grpc.CoreaStub(channel)
    channel.close()
    corea.close()
    state["llm"].close()
    llm_executor.close()


def test_llm_stopped_mid_run_degrades_then_restart_restores_deferral(rig, gsm8k_questions):
    state, port, llm_executor, stub = rig
    questions = iter(gsm8k_questions[20:])

    def ask(**fields):
        return stub.Solve(corea_pb2.SolveRequest(question=next(questions), **fields), timeout=600)

    healthy = ask()
    assert healthy.answered_by == corea_pb2.TIER_LLM and healthy.deferred and not healthy.degraded

    # Three requests in flight; stop the LLM server (no grace) once it has received one of them.
    calls = state["llm"].server.worker.calls
    futures = [stub.Solve.future(corea_pb2.SolveRequest(question=next(questions)), timeout=600) for _ in range(3)]
    while state["llm"].server.worker.calls == calls and not all(f.done() for f in futures):
        time.sleep(0.02)
    state["llm"].stop(grace_s=0)
    responses = [f.result() for f in futures]
    affected = [r for r in responses if r.degraded]
    assert affected, [r.answered_by for r in responses]
    for r in affected:
        assert r.deferred and r.answered_by == corea_pb2.TIER_SLM
        assert r.degraded_reason.startswith("LLM failed") or "circuit breaker" in r.degraded_reason, r.degraded_reason
        assert r.answer and "kept the SLM answer" in r.degraded_reason
        assert r.llm_tokens.completion_tokens == 0 and r.slm_tokens.completion_tokens > 0
    for r in responses:
        assert r.degraded or r.answered_by == corea_pb2.TIER_LLM  # never a silent SLM answer

    # While it is down the breaker is open (or half-open, and its one trial call fails): the SLM
    # answers, saying why.
    down = ask()
    assert down.degraded and "circuit breaker is open" in down.degraded_reason, down.degraded_reason

    # Back on the same port: after the cool-down a trial call succeeds and deferral is normal again.
    state["llm"] = llm_server(llm_executor, port)
    for _ in range(20):
        recovered = ask()
        if not recovered.degraded:
            break
        time.sleep(0.3)
    assert recovered.answered_by == corea_pb2.TIER_LLM and recovered.deferred and not recovered.degraded, recovered


def test_confidence_first_deferral_with_llm_down_still_returns_the_slm_answer(rig, gsm8k_questions):
    """Early deferral aborted the SLM after a few tokens; with no LLM the SLM runs to the end."""
    state, port, llm_executor, stub = rig
    state["llm"].stop(grace_s=0)
    try:
        r = stub.Solve(corea_pb2.SolveRequest(question=gsm8k_questions[30], contract="json_confidence_first"), timeout=600)
        assert r.degraded and r.answered_by == corea_pb2.TIER_SLM and r.answer, r
        assert r.deferred and "LLM" in r.degraded_reason
    finally:
        state["llm"] = llm_server(llm_executor, port)


def test_llm_timeout_is_retried_then_degrades_and_the_llm_request_is_aborted(rig, slm_executor, gsm8k_questions):
    """50 ms per LLM attempt is never enough for an answer: the attempts time out, the SLM answer stays."""
    state, port, llm_executor, _ = rig
    impatient = corea_server(slm_executor, f"127.0.0.1:{port}", threshold=1.0, llm_timeout_s=0.05, llm_retries=1,
                             retry_backoff_s=0.01, breaker_failures=5)
    # Connected already (model info and tokenizer in hand, as after a first call): the deadline falls on Generate.
    impatient.call(impatient.server.corea.cascade.llm.client.connect(30, wait_for_ready=True))
    try:
        with grpc.insecure_channel(impatient.address) as channel:
            r = corea_pb2_grpc.CoreaStub(channel).Solve(corea_pb2.SolveRequest(question=gsm8k_questions[31]), timeout=600)
    finally:
        impatient.close()
    assert r.degraded and r.answered_by == corea_pb2.TIER_SLM and r.answer, r
    # Retried unless the first attempt had already streamed a token (a retry would repeat it).
    assert "DEADLINE_EXCEEDED" in r.degraded_reason and " of 2)" in r.degraded_reason, r.degraded_reason
    # The worker saw the deadline too and aborted the request: its GetLoads shows the slot free
    # (the abort takes effect at the engine's next step).
    assert worker_running(state["llm"], settle_s=30) == 0
