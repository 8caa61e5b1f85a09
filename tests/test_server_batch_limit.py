"""A batch counts its items toward the server-wide limit (issue #20, item 3).

`--max-inflight 4`: a SolveBatch of 5 never runs, one of 3 beside two streams in flight is
refused, one of 2 fills the server (corea_inflight_requests shows 4) and a Solve beside it is
refused; every slot comes back. Refusals are RESOURCE_EXHAUSTED before any model runs.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from corea_engine.cascade import SolveRequest
from corea_engine.client import CoreaClient
from security_servers import secured_corea

LIMIT = 4


def q(i: int = 0) -> SolveRequest:
    return SolveRequest(f"What is {i} + {i}?", mode="slm_only")


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
    return err.value


def gauge(server) -> float:
    return server.server.metrics.registry.get_sample_value("corea_inflight_requests")


def wait_for(predicate, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_batch_items_count_toward_the_server_wide_limit(slm_executor):
    with secured_corea(slm_executor, max_inflight=LIMIT) as server, CoreaClient(server.address) as client:
        prefills = slm_executor.stats.prefills
        err = refused(lambda: client.solve_batch([q(i) for i in range(LIMIT + 1)], timeout_s=30))
        assert f"a batch of {LIMIT + 1} is more than this server's limit of {LIMIT}" in err.details()
        err = refused(lambda: client.solve_batch([q(i) for i in range(64)], timeout_s=30))
        assert "a batch of 64" in err.details()
        assert slm_executor.stats.prefills == prefills  # nothing ran

        held = [client.stream(q(i)) for i in range(2)]
        try:
            for stream in held:
                next(stream)  # in flight: its first event has arrived
            assert server.server.limit.inflight == 2 and gauge(server) == 2
            err = refused(lambda: client.solve_batch([q(i) for i in range(3)], timeout_s=30))
            assert "server is at its limit of 4 requests in flight (2 now, this call asks for 3)" in err.details()
            with ThreadPoolExecutor(1) as pool:
                batch = pool.submit(client.solve_batch, [q(7), q(8)], timeout_s=300)
                wait_for(lambda: server.server.limit.inflight == LIMIT or batch.done())
                assert gauge(server) == LIMIT, "the batch's two items hold two slots"
                err = refused(lambda: client.solve(q(9), timeout_s=30))
                assert "(4 now, this call asks for 1)" in err.details()
                assert len(batch.result()) == 2
        finally:
            for stream in held:
                stream.cancel()
        wait_for(lambda: server.server.limit.inflight == 0)
        assert gauge(server) == 0
        assert client.solve(q(1), timeout_s=300).answer  # all slots came back
