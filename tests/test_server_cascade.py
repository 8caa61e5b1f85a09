"""The cascade served over gRPC, escalating to a stand-in LLM server: policy, streaming, tiers.

Real servers on loopback, the real SmolLM2 on both tiers (the LLM tier shares the SLM's
weights), LLM calls counted on the LLM server itself.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import urllib.request

import grpc
import pytest

from cascade_servers import corea_server, llm_server, stand_in_llm
from corea_engine.cascade import CascadeConfig
from corea_engine.protos import corea_pb2, corea_pb2_grpc

PRICES = CascadeConfig()  # the servers here run with the default prices


@pytest.fixture(scope="module")
def servers(slm_executor):
    llm_executor = stand_in_llm(slm_executor)
    llm = llm_server(llm_executor)
    corea = corea_server(slm_executor, llm.address, metrics_port=0)
    channel = grpc.insecure_channel(corea.address)
    yield corea, llm, corea_pb2_grpc.CoreaStub(channel)
    channel.close()
    corea.close()
    llm.close()
    llm_executor.close()


def llm_calls(llm) -> int:
    return llm.server.worker.calls


def solve_all(stub, questions, **fields):
    """Concurrent unary Solves; responses in question order."""
    futures = [stub.Solve.future(corea_pb2.SolveRequest(question=q, **fields), timeout=600) for q in questions]
    return [f.result() for f in futures]


def test_threshold_zero_never_defers(servers, gsm8k_questions):
    _, llm, stub = servers
    before = llm_calls(llm)
    responses = solve_all(stub, gsm8k_questions[:3], threshold=0.0)
    for r in responses:
        assert not r.deferred and r.answered_by == corea_pb2.TIER_SLM, r
        assert r.HasField("confidence_expected") and r.llm_tokens.completion_tokens == 0
        assert r.slm_tokens.completion_tokens > 0 and r.cost > 0
    assert llm_calls(llm) == before


def test_threshold_one_defers_every_request_below_one(servers, gsm8k_questions):
    _, llm, stub = servers
    before = llm_calls(llm)
    responses = solve_all(stub, gsm8k_questions[3:6], threshold=1.0,
                          confidence_source=corea_pb2.CONFIDENCE_SOURCE_SAMPLED)
    for r in responses:
        assert r.confidence_sampled < 1.0  # the 0.D scale tops out at 0.9
        assert r.deferred and r.answered_by == corea_pb2.TIER_LLM and not r.degraded, r
        assert "< threshold 1" in r.deferral_reason
        assert r.llm_tokens.completion_tokens > 0 and r.llm_model == "stand-in-llm"
        assert r.answer  # the LLM answered under the same contract
        # What the LLM alone would cost is exactly its share of this request's cost.
        slm_cost, llm_cost = PRICES.tier_costs(r.slm_tokens.prompt_tokens, r.slm_tokens.completion_tokens,
                                               r.llm_tokens.prompt_tokens, r.llm_tokens.completion_tokens)
        assert math.isclose(r.cost, slm_cost + llm_cost) and math.isclose(r.llm_only_cost, llm_cost)
    assert llm_calls(llm) == before + 3


def test_llm_only_answers_from_the_llm_and_slm_only_never_calls_it(servers, gsm8k_questions):
    _, llm, stub = servers
    before = llm_calls(llm)
    for r in solve_all(stub, gsm8k_questions[6:8], mode=corea_pb2.ROUTING_MODE_LLM_ONLY):
        assert r.answered_by == corea_pb2.TIER_LLM and not r.deferred and not r.degraded, r
        assert r.slm_tokens.completion_tokens == 0 and not r.HasField("confidence_expected")
    assert llm_calls(llm) == before + 2
    for r in solve_all(stub, gsm8k_questions[8:10], mode=corea_pb2.ROUTING_MODE_SLM_ONLY, threshold=1.0):
        assert r.answered_by == corea_pb2.TIER_SLM and not r.deferred, r
        assert r.llm_tokens.completion_tokens == 0
    assert llm_calls(llm) == before + 2


def test_llm_output_cut_at_the_cap_over_grpc_is_degraded_with_finish_reasons(servers, gsm8k_questions):
    """The gRPC escalation client's text goes through the same contract check: a cut answer is
    never served, and the response says which tier ended how."""
    corea, _, stub = servers

    def outcomes() -> dict[str, float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{corea.server.metrics_port}/metrics", timeout=10).read().decode()
        found = re.findall(r'corea_requests_total\{method="Solve",outcome="(\w+)"\} (\S+)', text)
        return {outcome: float(value) for outcome, value in found}

    before = outcomes()
    for r in solve_all(stub, ["What is 17 * 23?", gsm8k_questions[10]], mode=corea_pb2.ROUTING_MODE_LLM_ONLY, max_new_tokens=6):
        assert r.degraded and r.answer == "" and "does not satisfy the json contract" in r.degraded_reason, r
        assert r.llm_finish_reason == "length" and r.slm_finish_reason == "length" and r.llm_tokens.completion_tokens == 6
    after = outcomes()
    assert after["degraded"] - before.get("degraded", 0) == 2 and after.get("accepted", 0) == before.get("accepted", 0)


def test_stream_decides_before_the_llm_and_confidence_first_defers_early(servers, gsm8k_questions):
    _, _, stub = servers
    request = corea_pb2.SolveRequest(question=gsm8k_questions[10], threshold=1.0, contract="json_confidence_first")
    events = list(stub.SolveStream(request, timeout=600))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds.count("decision") == 1 and kinds.count("result") == 1 and kinds[-1] == "result"
    assert kinds.count("confidence") == 1
    decision = events[kinds.index("decision")].decision
    assert decision.deferred and decision.tier == corea_pb2.TIER_LLM and decision.threshold == 1.0
    assert "llm_token" in kinds and kinds.index("decision") < kinds.index("llm_token")
    assert "slm_token" not in kinds[kinds.index("decision"):]
    confidence = events[kinds.index("confidence")].confidence
    assert math.isclose(sum(confidence.distribution), 1.0, rel_tol=1e-4)
    result = events[-1].result
    # Early deferral: '{"confidence": 0.D' is 8 SmolLM2 tokens; the abort lands within a step or two.
    assert confidence.slm_tokens <= 8
    assert result.slm_tokens.completion_tokens <= min(10, confidence.slm_tokens + 2), result.slm_tokens
    assert result.answered_by == corea_pb2.TIER_LLM and result.deferred
    streamed = "".join(e.llm_token.text for e in events if e.WhichOneof("event") == "llm_token")
    assert streamed == result.text


def test_solve_batch_keeps_request_order(servers, gsm8k_questions):
    _, _, stub = servers
    batch = corea_pb2.SolveBatchRequest(requests=[
        corea_pb2.SolveRequest(question=q, request_id=f"b{i}", mode=corea_pb2.ROUTING_MODE_SLM_ONLY)
        for i, q in enumerate(gsm8k_questions[11:13])])
    response = stub.SolveBatch(batch, timeout=600)
    assert [r.request_id for r in response.responses] == ["b0", "b1"]


INVALID = [
    (dict(question=""), "question is empty"),
    (dict(question="   "), "question is empty"),
    (dict(question="x" * 9000), "limit is 8000"),
    (dict(question="q", threshold=1.5), "threshold"),
    (dict(question="q", threshold=-0.1), "threshold"),
    (dict(question="q", threshold=float("nan")), "threshold"),
    (dict(question="q", contract="yaml"), "unknown contract 'yaml'"),
    (dict(question="q", mode=7), "unknown mode 7"),
    (dict(question="q", confidence_source=9), "unknown confidence_source 9"),
    (dict(question="q", max_new_tokens=100000), "max_new_tokens"),
]


@pytest.mark.parametrize("fields,message", INVALID, ids=[m for _, m in INVALID])
def test_invalid_input_is_invalid_argument(servers, fields, message):
    _, _, stub = servers
    for call in (stub.Solve, lambda r, timeout: list(stub.SolveStream(r, timeout=timeout))):
        with pytest.raises(grpc.RpcError) as err:
            call(corea_pb2.SolveRequest(**fields), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in err.value.details()


def test_server_keeps_serving_after_invalid_input_and_reports_metrics(servers, gsm8k_questions):
    corea, _, stub = servers
    with pytest.raises(grpc.RpcError):
        stub.Solve(corea_pb2.SolveRequest(question=""), timeout=30)
    r = stub.Solve(corea_pb2.SolveRequest(question=gsm8k_questions[13], mode=corea_pb2.ROUTING_MODE_SLM_ONLY), timeout=600)
    assert r.answered_by == corea_pb2.TIER_SLM and r.slm_tokens.completion_tokens > 0
    text = urllib.request.urlopen(f"http://127.0.0.1:{corea.server.metrics_port}/metrics", timeout=10).read().decode()
    assert 'corea_requests_total{method="Solve",outcome="invalid"}' in text
    assert 'corea_tokens_total{kind="completion",tier="slm"}' in text
    assert "corea_slm_confidence_bucket" in text and 'corea_latency_seconds_count{tier="total"}' in text


def test_health_and_reflection(servers):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    corea, _, _ = servers
    with grpc.insecure_channel(corea.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "corea.v1.Corea"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            health.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol="corea.v1.Corea")]
        answers = list(reflect.ServerReflectionInfo(iter(requests), timeout=10))
        services = {s.name for s in answers[0].list_services_response.service}
        assert {"corea.v1.Corea", "grpc.health.v1.Health"} <= services
        assert answers[1].file_descriptor_response.file_descriptor_proto  # the proto travels with it


def test_beyond_max_inflight_is_resource_exhausted(slm_executor, servers, gsm8k_questions):
    _, llm, _ = servers
    small = corea_server(slm_executor, llm.address, max_inflight=1)
    try:
        with grpc.insecure_channel(small.address) as channel:
            stub = corea_pb2_grpc.CoreaStub(channel)
            holding = stub.SolveStream(corea_pb2.SolveRequest(question=gsm8k_questions[14], mode=corea_pb2.ROUTING_MODE_SLM_ONLY), timeout=600)
            next(holding)  # the first event: the stream is in flight
            with pytest.raises(grpc.RpcError) as err:
                stub.Solve(corea_pb2.SolveRequest(question="What is 1 + 1?"), timeout=30)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limit of 1" in err.value.details()
            assert [e for e in holding if e.WhichOneof("event") == "result"]  # the first one still finishes
    finally:
        small.close()


def test_corea_solve_cli_calls_a_running_server(servers, gsm8k_questions):
    corea, _, _ = servers
    out = subprocess.run(
        [sys.executable, "-m", "corea_engine.cli", "solve", gsm8k_questions[15], "--address", corea.address,
         "--mode", "slm_only"], capture_output=True, text=True, timeout=600)
    assert out.returncode in (0, 1), out.stderr
    result = json.loads(out.stdout)
    assert result["answered_by"] == "slm" and result["mode"] == "slm_only" and result["slm_completion_tokens"] > 0
    bad = subprocess.run([sys.executable, "-m", "corea_engine.cli", "solve", "q", "--address", corea.address,
                          "--threshold", "3"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "INVALID_ARGUMENT" in bad.stderr and "threshold" in bad.stderr
