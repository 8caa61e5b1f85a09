"""Each exceeded limit has its own status and message: message size (RESOURCE_EXHAUSTED, from
gRPC), max_new_tokens over the server's cap (OUT_OF_RANGE), calls in flight per client
(RESOURCE_EXHAUSTED, naming the client). Refused calls reach no model."""

from __future__ import annotations

import grpc
import pytest

from smg_grpc_proto.generated import sglang_scheduler_pb2 as pb, sglang_scheduler_pb2_grpc as pb_grpc

from corea_engine.protos import corea_pb2, corea_pb2_grpc
from corea_engine.server.auth import TokenTable, peer_host
from corea_engine.server.security import ServerSecurity
from security_servers import bearer, secured_corea, secured_llm

CAP = 24


@pytest.fixture(scope="module")
def limited(slm_executor):
    security = ServerSecurity(tokens=TokenTable({"tok-a": "a", "tok-b": "b"}), max_message_bytes=4096,
                              max_new_tokens=CAP, max_inflight_per_client=2)
    with secured_corea(slm_executor, security) as server:
        with grpc.insecure_channel(server.address) as channel:
            yield server, security, corea_pb2_grpc.CoreaStub(channel)


def q(text="What is 2 + 3?", **fields):
    return corea_pb2.SolveRequest(question=text, mode=corea_pb2.ROUTING_MODE_SLM_ONLY, **fields)


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def test_a_message_over_the_size_limit_is_resource_exhausted(limited, slm_executor):
    _, _, stub = limited
    prefills = slm_executor.stats.prefills
    err = refused(lambda: stub.Solve(q("x" * 5000), timeout=30, metadata=bearer("tok-a")))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in err.details(), err.details()
    assert slm_executor.stats.prefills == prefills


def test_max_new_tokens_over_the_cap_is_out_of_range_and_names_the_field(limited, slm_executor):
    _, _, stub = limited
    prefills = slm_executor.stats.prefills
    err = refused(lambda: stub.Solve(q(max_new_tokens=CAP + 1), timeout=30, metadata=bearer("tok-a")))
    assert err.code() == grpc.StatusCode.OUT_OF_RANGE
    assert err.details().startswith(f"max_new_tokens is {CAP + 1}") and f"at most {CAP}" in err.details()
    batch = corea_pb2.SolveBatchRequest(requests=[q(max_new_tokens=CAP), q(max_new_tokens=4096)])
    err = refused(lambda: stub.SolveBatch(batch, timeout=30, metadata=bearer("tok-a")))
    assert err.code() == grpc.StatusCode.OUT_OF_RANGE and "requests[1].max_new_tokens is 4096" in err.details()
    err = refused(lambda: list(stub.SolveStream(q(max_new_tokens=2**32 - 1), timeout=30, metadata=bearer("tok-a"))))
    assert err.code() == grpc.StatusCode.OUT_OF_RANGE
    assert slm_executor.stats.prefills == prefills
    # At the cap the request runs (and stops at the cap).
    r = stub.Solve(q(max_new_tokens=CAP), timeout=300, metadata=bearer("tok-a"))
    assert 0 < r.slm_tokens.completion_tokens <= CAP


def test_per_client_concurrency_is_counted_per_token_identity(limited):
    _, security, stub = limited
    # Two streams of client "a" in flight (their first event has arrived), held open.
    held = [stub.SolveStream(q(f"What is {i} + {i}?"), timeout=300, metadata=bearer("tok-a")) for i in range(2)]
    try:
        for stream in held:
            next(stream)
        assert security.limits.inflight["token:a"] == 2
        err = refused(lambda: stub.Solve(q(), timeout=30, metadata=bearer("tok-a")))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "client token:a has 2 request(s) in flight" in err.details() and "per-client limit is 2" in err.details()
        # A batch of 2 from client "b" fits; one of 3 never does.
        assert len(stub.SolveBatch(corea_pb2.SolveBatchRequest(requests=[q(max_new_tokens=8)] * 2),
                                   timeout=300, metadata=bearer("tok-b")).responses) == 2
        err = refused(lambda: stub.SolveBatch(corea_pb2.SolveBatchRequest(requests=[q()] * 3), timeout=30,
                                              metadata=bearer("tok-b")))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "client token:b" in err.details()
    finally:
        for stream in held:
            stream.cancel()
    # Cancelled calls give their slots back.
    r = stub.Solve(q(max_new_tokens=8), timeout=300, metadata=bearer("tok-a"))
    assert r.slm_tokens.completion_tokens > 0
    assert security.limits.inflight["token:a"] == 0


def test_the_worker_applies_the_same_cap(slm_executor):
    from cascade_servers import stand_in_llm

    executor = stand_in_llm(slm_executor)
    ids = slm_executor.tokenizer.encode("Hello")

    def generate(**sampling):
        return list(stub.Generate(pb.GenerateRequest(tokenized=pb.TokenizedInput(input_ids=ids),
                                                     sampling_params=pb.SamplingParams(**sampling)), timeout=300))

    with secured_llm(executor, ServerSecurity(max_new_tokens=8)) as server:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.SglangSchedulerStub(channel)
            err = refused(lambda: generate(max_new_tokens=9))
            assert err.code() == grpc.StatusCode.OUT_OF_RANGE and "max_new_tokens" in err.details()
            assert executor.stats.prefills == 0  # refused before any model work
            assert 0 < generate(max_new_tokens=8)[-1].complete.completion_tokens <= 8
            assert 0 < generate()[-1].complete.completion_tokens <= 8  # unset: the cap bounds the default too
    executor.close()


def test_peer_host_parsing():
    assert peer_host("ipv4:127.0.0.1:5555") == "127.0.0.1"
    assert peer_host("ipv6:[::1]:5555") == "::1"
    assert peer_host("ipv6:%5B::1%5D:5555") == "::1"
    assert peer_host("unix:/tmp/sock") == "unix:/tmp/sock"
