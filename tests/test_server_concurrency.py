"""Many clients at once, deadlines and graceful shutdown on a real server."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from cascade_servers import corea_server, llm_server, stand_in_llm
from corea_engine.protos import corea_pb2, corea_pb2_grpc


@pytest.fixture(scope="module")
def rig(slm_executor):
    llm_executor = stand_in_llm(slm_executor)
    llm = llm_server(llm_executor)
    corea = corea_server(slm_executor, llm.address, max_reasoning_chars=24)  # short answers: 32 of them
    yield corea, llm
    corea.close()
    llm.close()
    llm_executor.close()


def test_32_concurrent_clients_mixed_unary_and_streaming_each_get_one_result(rig, gsm8k_questions):
    corea, llm = rig
    barrier = threading.Barrier(32)

    def client(i: int):
        # Every 8th request always defers, so both tiers are busy at once.
        request = corea_pb2.SolveRequest(question=gsm8k_questions[i % len(gsm8k_questions)], request_id=f"c{i}",
                                         threshold=1.0 if i % 8 == 0 else 0.0)
        with grpc.insecure_channel(corea.address) as channel:
            stub = corea_pb2_grpc.CoreaStub(channel)
            barrier.wait()
            if i % 2:
                return [stub.Solve(request, timeout=900)]
            events = list(stub.SolveStream(request, timeout=900))
            assert events[-1].WhichOneof("event") == "result"
            return [e.result for e in events if e.WhichOneof("event") == "result"]

    with ThreadPoolExecutor(32) as pool:
        outcomes = list(pool.map(client, range(32)))
    for i, results in enumerate(outcomes):
        assert len(results) == 1, (i, len(results))
        r = results[0]
        assert r.request_id == f"c{i}"
        assert r.answered_by == (corea_pb2.TIER_LLM if i % 8 == 0 else corea_pb2.TIER_SLM), (i, r)
        assert not r.degraded


DEADLINE_S = 8.0


@contextlib.contextmanager
def hung_llm():
    """A gRPC server that takes every call and never answers (an LLM stuck mid-call), noting the
    deadline each call arrived with. Yields (address, deadlines seen in seconds)."""
    seen: list[float | None] = []

    def hang(request, context):
        seen.append(context.time_remaining())
        while context.is_active():  # until the caller's deadline or cancel ends the call
            time.sleep(0.02)
        return iter(())

    class EveryMethod(grpc.GenericRpcHandler):
        def service(self, handler_call_details):
            return grpc.unary_stream_rpc_method_handler(hang)

    server = grpc.server(ThreadPoolExecutor(4), handlers=[EveryMethod()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", seen
    finally:
        server.stop(0)


def test_the_callers_deadline_reaches_the_llm_call_and_a_hung_llm_degrades_in_time(slm_executor, gsm8k_questions):
    """The LLM call carries what is left of the caller's deadline, not llm_timeout_s (30 s): with
    an LLM that never answers, the SLM's answer still arrives, degraded, before the deadline."""
    with hung_llm() as (address, seen):
        corea = corea_server(slm_executor, address, max_reasoning_chars=24)
        try:
            with grpc.insecure_channel(corea.address) as channel:
                started = time.monotonic()
                r = corea_pb2_grpc.CoreaStub(channel).Solve(
                    corea_pb2.SolveRequest(question=gsm8k_questions[3], threshold=1.0), timeout=DEADLINE_S)
                elapsed = time.monotonic() - started
        finally:
            corea.close()
    assert r.deferred and r.degraded and r.answered_by == corea_pb2.TIER_SLM and r.answer, r
    assert "deadline" in r.degraded_reason.lower(), r.degraded_reason
    # The LLM server saw the caller's remaining time as its deadline (the SLM had used some of it).
    assert seen and seen[0] is not None and DEADLINE_S - elapsed < seen[0] < DEADLINE_S, (seen, elapsed)


def test_deadline_exceeded_is_reported_and_the_server_goes_on(rig, gsm8k_questions):
    # grpc ends a 0.2 s call by itself; what this shows is that the server serves on after it.
    corea, _ = rig
    with grpc.insecure_channel(corea.address) as channel:
        stub = corea_pb2_grpc.CoreaStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Solve(corea_pb2.SolveRequest(question=gsm8k_questions[0], threshold=1.0), timeout=0.2)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        r = stub.Solve(corea_pb2.SolveRequest(question=gsm8k_questions[1], mode=corea_pb2.ROUTING_MODE_SLM_ONLY), timeout=600)
        assert r.answered_by == corea_pb2.TIER_SLM


def test_graceful_shutdown_drains_in_flight_requests(slm_executor, rig, gsm8k_questions):
    _, llm = rig
    server = corea_server(slm_executor, llm.address)
    with grpc.insecure_channel(server.address) as channel:
        stub = corea_pb2_grpc.CoreaStub(channel)
        stream = stub.SolveStream(corea_pb2.SolveRequest(question=gsm8k_questions[2], mode=corea_pb2.ROUTING_MODE_SLM_ONLY), timeout=600)
        first = next(stream)
        assert first.WhichOneof("event") == "slm_token"
        stopping = threading.Thread(target=server.stop, kwargs={"grace_s": 120})
        stopping.start()
        rest = list(stream)  # the in-flight request finishes during the grace period
        stopping.join()
        assert rest[-1].WhichOneof("event") == "result" and rest[-1].result.answered_by == corea_pb2.TIER_SLM
        with pytest.raises(grpc.RpcError) as err:  # and nothing new is accepted
            stub.Solve(corea_pb2.SolveRequest(question="What is 1 + 1?"), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    server.close()


def test_sigterm_drains_the_in_flight_request_then_the_process_exits(tmp_path, gsm8k_questions):
    """README: graceful drain on SIGTERM. A real `corea serve` process gets SIGTERM mid-stream."""
    env = dict(os.environ, COREA_MAX_REASONING_CHARS="80", COREA_MAX_ANSWER_CHARS="16", COREA_THREADS="1")
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "corea_engine.cli", "serve", "--host", "127.0.0.1", "--port", "0",
                                 "--no-metrics", "--llm-model", "smollm2-135m", "--grace-s", "120"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 300
        while not (ready := re.search(r"on port (\d+)", log.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        with grpc.insecure_channel(f"127.0.0.1:{ready.group(1)}") as channel:
            stream = corea_pb2_grpc.CoreaStub(channel).SolveStream(
                corea_pb2.SolveRequest(question=gsm8k_questions[4], mode=corea_pb2.ROUTING_MODE_SLM_ONLY), timeout=600)
            assert next(stream).WhichOneof("event") == "slm_token"
            proc.send_signal(signal.SIGTERM)
            rest = list(stream)  # the request in flight finishes during the drain
        assert rest[-1].WhichOneof("event") == "result" and rest[-1].result.answered_by == corea_pb2.TIER_SLM
        assert proc.wait(timeout=120) == 0, log.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
LONG_QUESTION = "A farmer counts the sheep that jump over the fence by the river before dusk. " * 85


def _idle(executor, limit_s=300.0) -> bool:
    import time

    deadline = time.monotonic() + limit_s
    while executor.running and time.monotonic() < deadline:
        time.sleep(0.01)
    return executor.running == 0


# Deadlines shorter than the prompt's prefill (~1 s at two quiet threads, 10 chunks): a longer one
# can pass after the prefill on a fast machine, and the test would not be about prefill.
@pytest.mark.parametrize("timeout_s", [0.4, 0.7])
def test_a_deadline_during_prefill_stops_the_work_and_counts_as_a_deadline(rig, slm_executor, timeout_s):
    """A long prompt with a short deadline: the SLM stops within a prefill chunk of it, and the
    metrics say deadline, not cancelled; a caller that cancels is counted as cancelled."""
    from corea_engine.runtime import torch_executor

    corea, llm = rig
    requests = corea.server.metrics.requests
    def counts():
        return requests.labels("Solve", "deadline")._value.get(), requests.labels("Solve", "cancelled")._value.get()

    total_chunks = len(slm_executor.tokenizer.encode(LONG_QUESTION)) // torch_executor.PREFILL_CHUNK_TOKENS
    before, chunks = counts(), slm_executor.stats.prefill_chunks
    with grpc.insecure_channel(corea.address) as channel:
        stub = corea_pb2_grpc.CoreaStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Solve(corea_pb2.SolveRequest(question=LONG_QUESTION, mode=corea_pb2.ROUTING_MODE_SLM_ONLY), timeout=timeout_s)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert _idle(slm_executor) and slm_executor.stats.prefill_chunks - chunks < total_chunks, slm_executor.stats
        assert _settled(counts, (before[0] + 1, before[1])), (before, counts())
        call = stub.Solve.future(corea_pb2.SolveRequest(question=LONG_QUESTION, mode=corea_pb2.ROUTING_MODE_SLM_ONLY), timeout=600)
        chunks = slm_executor.stats.prefill_chunks
        while slm_executor.stats.prefill_chunks == chunks:  # until the prefill is under way
            threading.Event().wait(0.002)
        call.cancel()
        assert _idle(slm_executor) and slm_executor.stats.prefill_chunks - chunks < total_chunks
    assert _settled(counts, (before[0] + 1, before[1] + 1))


def _settled(read, expected, limit_s=10.0) -> bool:
    """The server records a call's outcome asynchronously, just after the client sees it end."""
    for _ in range(int(limit_s / 0.05)):
        if read() == expected:
            return True
        threading.Event().wait(0.05)
    return read() == expected


def test_a_workers_deadline_during_prefill_stops_the_work(rig):
    """The LLM tier (`corea worker`) gets a Generate whose gRPC deadline passes during a long prefill:
    DEADLINE_EXCEEDED, and the executor stops within a chunk instead of finishing the prompt."""
    from smg_grpc_proto.generated import sglang_scheduler_pb2 as pb, sglang_scheduler_pb2_grpc as pb_grpc

    from corea_engine.runtime import torch_executor

    _, llm = rig
    executor = llm.server.worker.executor
    ids = executor.tokenizer.encode(LONG_QUESTION)
    total_chunks = len(ids) // torch_executor.PREFILL_CHUNK_TOKENS
    for deadline_s in (0.8, 2.0):
        chunks = executor.stats.prefill_chunks
        with grpc.insecure_channel(llm.address) as channel:
            with pytest.raises(grpc.RpcError) as err:
                list(pb_grpc.SglangSchedulerStub(channel).Generate(pb.GenerateRequest(
                    tokenized=pb.TokenizedInput(input_ids=ids), sampling_params=pb.SamplingParams(max_new_tokens=64)),
                    timeout=deadline_s))
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert _idle(executor) and executor.stats.prefill_chunks - chunks < total_chunks
