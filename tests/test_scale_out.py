"""Two `corea serve` replicas behind one client channel (client-side round_robin), and one of them
going away under load.

The cascade server keeps no per-client state, so any replica can take any call. The client does
what a production client should (docs/scaling.md): a service config with round_robin over every
address, wait_for_ready, and a retry policy for UNAVAILABLE (a call that reached a replica as it
went away). Each replica is its own engine (a second executor over the same weights).
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from corea_engine.protos import corea_pb2, corea_pb2_grpc
from corea_engine.runtime.torch_executor import TorchExecutor
from security_servers import secured_corea

TINY = dict(max_reasoning_chars=24, max_answer_chars=8)
MAX_NEW_TOKENS = 12  # answers may be cut (then degraded, "SLM output unusable"): routing is the point here

SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{
        "name": [{"service": "corea.v1.Corea"}],
        "waitForReady": True,
        "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"]},
    }],
})


def balanced_channel(*servers) -> grpc.Channel:
    target = "ipv4:" + ",".join(f"127.0.0.1:{s.port}" for s in servers)
    return grpc.insecure_channel(target, options=[("grpc.service_config", SERVICE_CONFIG), ("grpc.enable_retries", 1)])


def served(server) -> int:
    """Calls a replica (an app.Server) finished, by outcome, from its own metrics registry."""
    total = 0.0
    for metric in server.metrics.registry.collect():
        if metric.name == "corea_requests":
            total += sum(s.value for s in metric.samples if s.name == "corea_requests_total")
    return int(total)


@pytest.fixture
def replicas(slm_executor):
    second = TorchExecutor(model_and_tokenizer=(slm_executor.model, slm_executor.tokenizer), max_batch_size=16)
    a, b = secured_corea(slm_executor, **TINY), secured_corea(second, **TINY)
    yield a, b
    a.close()
    b.close()
    second.close()


def ask(stub, i: int):
    return stub.Solve(corea_pb2.SolveRequest(question=f"What is {i} + {i + 1}?", request_id=f"q{i}",
                                             max_new_tokens=MAX_NEW_TOKENS), timeout=300)


def warm_up(channel, n: int = 4) -> None:
    """Calls until both subchannels are READY (round_robin connects to every address)."""
    health = health_pb2_grpc.HealthStub(channel)
    for _ in range(n):
        health.Check(health_pb2.HealthCheckRequest(), timeout=30, wait_for_ready=True)


def test_round_robin_spreads_calls_over_both_replicas(replicas):
    a, b = replicas
    with balanced_channel(a, b) as channel:
        warm_up(channel)
        stub = corea_pb2_grpc.CoreaStub(channel)
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda i: ask(stub, i), range(10)))
    assert [r.request_id for r in responses] == [f"q{i}" for i in range(10)]
    split = served(a.server), served(b.server)
    assert sum(split) == 10
    assert min(split) >= 3, split


@pytest.mark.parametrize("grace_s", [30.0, 0.0], ids=["graceful", "hard-stop"])
def test_a_replica_going_down_fails_no_call_beyond_those_in_flight(replicas, grace_s):
    a, b = replicas
    server_a, server_b = a.server, b.server
    results, failures = [], []
    lock = threading.Lock()
    with balanced_channel(a, b) as channel:
        warm_up(channel)
        stub = corea_pb2_grpc.CoreaStub(channel)

        def client(c: int):
            for k in range(4):
                try:
                    r = ask(stub, 10 * c + k)
                    with lock:
                        results.append(r)
                except grpc.RpcError as err:
                    with lock:
                        failures.append(err.code())

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(client, c) for c in range(4)]
            while len(results) < 2:  # both replicas are busy by now
                time.sleep(0.05)
            in_flight_on_a = server_a.limit.inflight
            served_by_a = served(server_a)
            a.stop(grace_s=grace_s)  # graceful: drains in-flight calls; hard: cancels them
            for f in futures:
                f.result()
    # Graceful: nothing fails. Hard stop: at most the calls A held at that moment (the retry
    # policy re-sends those that never got an answer, so usually none fail either).
    limit = 0 if grace_s else in_flight_on_a
    assert len(failures) <= limit, (failures, in_flight_on_a)
    assert len(results) + len(failures) == 16
    assert served(server_a) <= served_by_a + in_flight_on_a  # A took no new call after it stopped
    assert served(server_b) >= len(results) - served(server_a)
