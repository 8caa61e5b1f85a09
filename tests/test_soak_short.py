"""A short soak (benchmarks/soak.py) on in-process servers: 8 clients, mixed unary and streaming,
15 s, the LLM server stopped after 6 s (once it has answered a request) and restarted 5 s later
(not before a probe sent during the outage has its answer). Every result the server produced
reached its client, nothing passes a 60 s deadline (a few seconds is the norm on an idle machine),
the always-deferring requests inside the outage are answered degraded with the reason, and
deferral works again after the restart.
The full run (64 clients, 60 s, subprocess servers) is `python benchmarks/soak.py`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import grpc
import pytest

from cascade_servers import corea_server, free_port, llm_server, stand_in_llm
from corea_engine.protos import corea_pb2, corea_pb2_grpc

_spec = importlib.util.spec_from_file_location("soak", Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py")
soak_module = sys.modules.setdefault("soak", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(soak_module)

FAULTS = dict(llm_retries=1, retry_backoff_s=0.05, breaker_failures=3, breaker_cooldown_s=1.0, llm_timeout_s=60.0,
              max_reasoning_chars=24, max_answer_chars=8)  # ~30-token answers
DEADLINE_S = 60.0


@pytest.fixture
def rig(slm_executor):
    llm_executor = stand_in_llm(slm_executor)
    port = free_port()
    state = {"llm": llm_server(llm_executor, port)}
    corea = corea_server(slm_executor, f"127.0.0.1:{port}", max_inflight=32, metrics_port=0, **FAULTS)
    metrics = f"http://127.0.0.1:{corea.server.metrics_port}/metrics"

    def stop_llm():
        state["llm"].close()  # in-flight LLM calls get 5 s to finish (ServerThread's grace), then are cut

    def start_llm():
        state["llm"] = llm_server(llm_executor, port)

    pid = os.getpid()
    yield soak_module.SimpleRig(corea.address, stop_llm, start_llm, rss=lambda: {"test process": soak_module.rss_mb(pid)},
                                server_results=lambda: soak_module.server_results(metrics))
    corea.close()
    state["llm"].close()
    llm_executor.close()


def test_short_soak_loses_nothing_across_an_llm_restart(rig, gsm8k_questions):
    report, outcomes = soak_module.soak(rig, gsm8k_questions, clients=8, duration_s=15.0, deadline_s=DEADLINE_S,
                                        llm_down_at=0.4, llm_down_s=5.0, log=lambda line: None)
    print("\n" + report.markdown())
    # Lost (server results vs client results), errors, deadline, the outage's requests: see problems().
    assert not report.problems(), report.problems()
    assert report.server_results == report.results == report.sent == len(outcomes) > 0, report
    assert report.unary > 0 and report.streaming > 0
    assert report.answered_by.get("TIER_LLM", 0) > 0  # deferral happened while the LLM was up
    assert report.inside_outage >= 1 and report.degraded >= report.inside_outage, report
    for o in outcomes:
        if o.degraded:
            assert o.deferred and o.degraded_reason and "LLM" in o.degraded_reason, o
    # After the restart (and the breaker's cool-down) deferral reaches the LLM again.
    with grpc.insecure_channel(rig.address) as channel:
        stub = corea_pb2_grpc.CoreaStub(channel)
        for _ in range(20):
            r = stub.Solve(corea_pb2.SolveRequest(question=gsm8k_questions[5], threshold=1.0), timeout=DEADLINE_S)
            if not r.degraded:
                break
            time.sleep(0.3)
    assert r.answered_by == corea_pb2.TIER_LLM and not r.degraded, r
