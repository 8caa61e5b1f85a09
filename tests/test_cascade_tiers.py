"""Three tiers on loopback with the real model: SmolLM2 in process (first tier), a `corea worker` over
the same weights reached by RemoteExecutor (middle), SmolLM2 in process again (last). All three are
stand-ins for models of growing size: the machinery (routing, trace, cost, degraded answers) is what
is tested. Thresholds 0 (accept any stated confidence) and 1 (the 0.D scale tops out at 0.9: defer)
send a question to each tier in turn."""

from __future__ import annotations

import asyncio

import pytest

from cascade_servers import SMALL, serve_banner, stand_in_llm, worker_server
from corea_engine.cascade import (
    Cascade, CascadeConfig, ConfidenceKnown, Decision, Finished, InvalidSolveRequest, SolveRequest, TierToken,
)
from corea_engine.cascade_config import ConfigError, TierConfig
from corea_engine.escalation.local_llm import ExecutorLLM
from corea_engine.runtime.remote_executor import RemoteExecutor

TIERS = (TierConfig("small", 0.5, 0.1, 0.2), TierConfig("mid", 0.5, 1.0, 2.0), TierConfig("large", 0.5, 10.0, 20.0))
CONFIG = dict(**SMALL, contract="json_confidence_first", tiers=TIERS)


@pytest.fixture(scope="module")
def large(slm_executor):
    executor = stand_in_llm(slm_executor)
    yield executor
    executor.close()


@pytest.fixture(scope="module")
def mid(slm_executor):
    executor = stand_in_llm(slm_executor)
    worker = worker_server(executor)
    remote = RemoteExecutor(worker.address)
    yield remote, worker
    remote.close()
    worker.close()
    executor.close()


def run(slm, mid_executor, large, question, on_event=None, **fields):
    async def go():
        cascade = Cascade.tiered([slm, mid_executor, ExecutorLLM(large)], CascadeConfig(**CONFIG))
        events = []
        try:
            async for event in cascade.stream(SolveRequest(question=question, **fields)):
                events.append(event)
                if on_event is not None:
                    await on_event(event)
        finally:
            await cascade.close()
        return events

    events = asyncio.run(go())
    assert isinstance(events[-1], Finished)
    return events[-1].result, events


def check_costs(result):
    prices = {t.name: t for t in TIERS}
    for t in result.trace:
        price = prices[t.tier]
        assert t.cost == pytest.approx((t.prompt_tokens * price.prompt_price + t.completion_tokens * price.completion_price) / 1000)
        assert t.prompt_tokens > 0 and t.latency_ms > 0
    assert result.cost == pytest.approx(sum(t.cost for t in result.trace))


@pytest.mark.parametrize("thresholds,tier", [((0.0, 0.0), 0), ((1.0, 0.0), 1), ((1.0, 1.0), 2)])
def test_thresholds_send_the_question_to_each_tier_in_turn(slm_executor, mid, large, gsm8k_questions, thresholds, tier):
    remote, worker = mid
    calls = worker.server.worker.calls
    r, events = run(slm_executor, remote, large, gsm8k_questions[2], thresholds=thresholds)
    assert not r.degraded and r.answer, r
    assert (r.answered_tier_index, r.answered_tier) == (tier, TIERS[tier].name)
    assert r.answered_by == ("slm", "mid", "llm")[tier] and r.deferred == (tier > 0)
    # The trace: one entry per tier run, each deferring tier with the confidence it read and its threshold.
    assert [(t.tier_index, t.decision) for t in r.trace] == [(k, "defer") for k in range(tier)] + [
        (tier, "accept" if tier < 2 else "answer")]
    for k, t in enumerate(r.trace[:tier]):
        assert t.confidence is not None and t.threshold == 1.0 and "< threshold 1" in t.reason
        assert t.finish_reason == "abort" and t.completion_tokens < 15  # confidence-first: deferred a few tokens in
    assert r.trace[-1].completion_tokens > 0 and (r.trace[-1].threshold is None) == (tier == 2)
    check_costs(r)
    decisions = [e for e in events if isinstance(e, Decision)]
    assert [(d.decided_by, d.tier_index, d.deferred) for d in decisions] == [(k, k + 1, True) for k in range(tier)] + (
        [(tier, tier, False)] if tier < 2 else [])
    readings = [e.tier_index for e in events if isinstance(e, ConfidenceKnown)]
    assert readings == list(range(min(tier + 1, 2)))  # the last tier states a confidence but decides nothing
    assert worker.server.worker.calls == calls + (tier >= 1)
    if tier == 1:
        assert "".join(e.text for e in events if isinstance(e, TierToken)) == r.text
    # The two-tier fields read as before: the first tier's confidence, its tokens, the last tier's tokens.
    assert r.confidence_expected is not None and r.slm_completion_tokens == r.trace[0].completion_tokens
    assert r.llm_completion_tokens == (r.trace[-1].completion_tokens if tier == 2 else 0)


def test_the_middle_tier_failing_mid_run_degrades_to_the_first_tiers_answer(slm_executor, large, gsm8k_questions):
    executor = stand_in_llm(slm_executor)
    worker = worker_server(executor)
    remote = RemoteExecutor(worker.address)
    stopped = []

    async def kill_on_its_first_token(event):
        if isinstance(event, TierToken) and not stopped:  # the middle tier is generating: kill its worker
            stopped.append(event.index)
            await asyncio.to_thread(worker.stop, 0)

    try:
        r, events = run(slm_executor, remote, large, gsm8k_questions[3], on_event=kill_on_its_first_token,
                        thresholds=(1.0, 0.0))
        assert stopped, "the middle tier never streamed a token"
        assert r.degraded and r.answered_tier_index == 0 and r.answered_by == "slm" and r.answer, r
        assert r.degraded_reason.startswith("mid failed: ") and "kept the small answer" in r.degraded_reason
        # small deferred (aborted early), mid failed, small ran again to the end for the degraded answer
        assert [(t.tier, t.decision) for t in r.trace] == [("small", "defer"), ("mid", "failed"), ("small", "fallback")]
        assert r.trace[0].finish_reason == "abort" and r.trace[2].finish_reason in ("confidence", "stop")
        assert r.confidence_expected is not None and r.slm_finish_reason == r.trace[2].finish_reason
        check_costs(r)
        # With the worker gone, the next question degrades the same way (connection refused), with the reason.
        r, _ = run(slm_executor, remote, large, gsm8k_questions[4], thresholds=(1.0, 0.0))
        assert r.degraded and r.answered_tier == "small" and "mid failed" in r.degraded_reason, r
        assert [t.decision for t in r.trace] == ["defer", "failed", "fallback"]
    finally:
        remote.close()
        worker.close()
        executor.close()


def test_tiers_are_checked_at_start_up_and_per_request(slm_executor, large):
    with pytest.raises(ConfigError, match="at least two"):
        CascadeConfig(tiers=TIERS[:1]).validate()
    with pytest.raises(ConfigError, match="names must differ"):
        CascadeConfig(tiers=(TIERS[0], TIERS[0])).validate()
    with pytest.raises(ConfigError, match=r"tier 1 \('mid'\) threshold must be a number in \[0, 1\]"):
        CascadeConfig(tiers=(TIERS[0], TierConfig("mid", 1.5), TIERS[2])).validate()
    with pytest.raises(ConfigError, match="OpenAI endpoint: its confidence is the one written in its text"):
        CascadeConfig(tiers=(TIERS[0], TierConfig("mid", openai_base_url="http://127.0.0.1:9/v1", model="m"), TIERS[2])).validate()
    for setting, value, key in (("threshold", 0.9, "threshold"), ("llm_completion_price", 1.0, "completion_price"),
                                ("slm_temperature", 0.5, "temperature"), ("llm_address", "h:1", "address")):
        with pytest.raises(ConfigError, match=rf"with tiers, give each tier its {key} \(tiers\[i\]\.{key}\), not {setting}"):
            CascadeConfig(tiers=TIERS, **{setting: value}).validate()
    with pytest.raises(ConfigError, match="unknown key"):
        TierConfig.parse("name=x,price=3")
    with pytest.raises(ConfigError, match=r"tier 1 \('mid'\): address must be HOST:PORT, got 'nohost'"):
        CascadeConfig(tiers=(TIERS[0], TierConfig("mid", address="nohost"), TIERS[2])).validate()
    assert TierConfig.parse("name=mid,address=127.0.0.1:5,threshold=0.6,prompt-price=1").threshold == 0.6
    cascade = Cascade.tiered([slm_executor, slm_executor, ExecutorLLM(large)], CascadeConfig(**CONFIG))
    with pytest.raises(InvalidSolveRequest, match="one per tier but the last"):
        cascade.plan(SolveRequest("q", thresholds=(0.5,)))
    with pytest.raises(InvalidSolveRequest, match=r"tier 1 \('mid'\) threshold must be a number in"):
        cascade.plan(SolveRequest("q", thresholds=(0.5, 2.0)))
    assert cascade.plan(SolveRequest("q", threshold=0.1, thresholds=(0.5, 0.7))).thresholds == [0.1, 0.7]


def test_a_middle_tier_behind_an_escalation_client_must_be_read_as_sampled(slm_executor, large):
    from corea_engine.escalation.grpc_llm import GrpcLLM

    config = CascadeConfig(**{**CONFIG, "confidence_source": "sampled"})
    cascade = Cascade.tiered([slm_executor, GrpcLLM("127.0.0.1:9"), ExecutorLLM(large)], config)
    with pytest.raises(InvalidSolveRequest, match="states only the sampled"):
        cascade.plan(SolveRequest("q", confidence_source="expected"))
    assert cascade.plan(SolveRequest("q")).source == "sampled"


def test_tiers_from_a_config_file_and_the_environment(tmp_path):
    path = tmp_path / "cascade.toml"
    path.write_text('[cascade]\ncontract = "json"\n\n[[cascade.tiers]]\nname = "small"\nthreshold = 0.7\n\n'
                    '[[cascade.tiers]]\nname = "mid"\naddress = "127.0.0.1:50062"\nthreshold = 0.6\nprompt_price = 0.5\n\n'
                    '[[cascade.tiers]]\nname = "large"\nopenai_base_url = "http://127.0.0.1:9/v1"\nmodel = "big"\n')
    config = CascadeConfig.load(path, env={})
    assert [(t.name, t.threshold) for t in config.tier_list()] == [("small", 0.7), ("mid", 0.6), ("large", 0.5)]
    assert config.tier_list()[1].address == "127.0.0.1:50062" and config.tier_list()[1].prompt_price == 0.5
    env = {"COREA_TIERS": '[{"name": "a"}, {"name": "b", "threshold": "x"}]'}
    with pytest.raises(ConfigError, match="tiers\\[1\\]: threshold must be a number, got 'x'"):
        CascadeConfig.load(env=env)
    # two tiers stay the default: the slm/llm settings as tiers
    assert [t.name for t in CascadeConfig().tier_list()] == ["slm", "llm"]


# ------------------------------------------------------------------ `corea serve --tier ...` over gRPC and HTTP
@pytest.fixture(scope="module")
def served(mid, tmp_path_factory):
    """A `corea serve` process with three --tier flags: SmolLM2 in process, the middle worker of this
    test process by address, SmolLM2 in process again as the last tier (sharing the first's weights)."""
    import json
    import os
    import subprocess
    import sys

    import grpc

    from corea_engine.protos import corea_pb2_grpc

    _, worker = mid
    config = tmp_path_factory.mktemp("tiers") / "cascade.json"
    config.write_text(json.dumps({**SMALL, "contract": "json_confidence_first"}))
    env = {**os.environ, "COREA_THREADS": os.environ.get("COREA_THREADS", "1")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "corea_engine.cli", "serve", "--host", "127.0.0.1", "--port", "0", "--http-port", "0",
         "--metrics-port", "0", "--config", str(config),
         "--tier", "name=small,prompt-price=0.1,completion-price=0.2",
         "--tier", f"name=mid,address={worker.address},prompt-price=1,completion-price=2",
         "--tier", "name=large,model=smollm2-135m,prompt-price=10,completion-price=20"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    banner, grpc_port, http_port = serve_banner(proc)
    assert "in process: smollm2-135m (cpu, float32), smollm2-135m (stand-in large) (cpu, float32)" in banner, banner
    metrics_port = int(banner.rsplit(":", 1)[1].split("/")[0])
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    yield corea_pb2_grpc.CoreaStub(channel), f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{metrics_port}/metrics"
    channel.close()
    proc.terminate()
    proc.wait(timeout=30)


def test_served_tiers_carry_the_trace_over_grpc_http_and_metrics(served, gsm8k_questions):
    import json

    import httpx

    from corea_engine.protos import corea_pb2
    from corea_engine.server.convert import from_response

    stub, base, metrics = served
    msg = stub.Solve(corea_pb2.SolveRequest(question=gsm8k_questions[5], thresholds=[1.0, 0.0]), timeout=300)
    assert msg.answered_by == corea_pb2.TIER_MIDDLE and (msg.answered_tier, msg.answered_tier_index) == ("mid", 1)
    r = from_response(msg)
    assert [(t.tier, t.decision) for t in r.trace] == [("small", "defer"), ("mid", "accept")] and not r.degraded
    assert r.trace[0].threshold == 1.0 and r.trace[0].confidence is not None and r.trace[1].cost > 0

    body = {"model": "corea", "messages": [{"role": "user", "content": gsm8k_questions[6]}], "stream": True,
            "thresholds": [1.0, 1.0]}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=300) as response:
        assert response.status_code == 200
        chunks = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    decisions = [c["corea"]["decision"] for c in chunks if "decision" in c.get("corea", {})]
    assert [(d["decided_by"], d["tier_index"], d["tier_name"]) for d in decisions] == [(0, 1, "mid"), (1, 2, "large")]
    final = next(c["corea"] for c in chunks if "trace" in c.get("corea", {}))
    assert final["answered_tier"] == "large" and [t["decision"] for t in final["trace"]] == ["defer", "defer", "answer"]
    streamed = "".join(c["choices"][0]["delta"].get("reasoning_content", "") for c in chunks if c.get("choices"))
    assert streamed == final["text"]  # only the answering tier's tokens reach the client

    ready = httpx.get(f"{base}/ready", timeout=30).json()
    assert [(t["name"], t["available"]) for t in ready["tiers"]] == [("small", True), ("mid", True), ("large", True)]

    text = httpx.get(metrics, timeout=30).text
    for series in ('corea_tier_decisions_total{decision="defer",tier="small"} 2.0',
                   'corea_tier_decisions_total{decision="accept",tier="mid"} 1.0',
                   'corea_tier_decisions_total{decision="answer",tier="large"} 1.0', 'corea_answered_total{tier="mid"} 1.0'):
        assert series in text, series
    assert 'corea_cost_total{tier="mid"}' in text and 'corea_tokens_total{kind="completion",tier="large"}' in text


def test_serve_refuses_bad_tiers_before_loading_a_model():
    import subprocess
    import sys

    for flags, words in ((["--tier", "name=a"], "at least two"),
                         (["--tier", "name=a", "--tier", "name=b,threshold=2"], "tier 1 ('b') threshold must be"),
                         (["--tier", "name=a", "--tier", "name=b", "--threshold", "0.5"], "drop --threshold"),
                         # a tier with nowhere to run is found before the first tier's model is looked for
                         (["--model", "/no/such/model", "--tier", "name=a", "--tier", "name=b", "--tier", "name=c"],
                          "tier 1 (b) needs address="),
                         (["--tier", "name=a", "--tier", "name=b"], "tier 1 (b) needs address=")):
        out = subprocess.run([sys.executable, "-m", "corea_engine.cli", "serve", "--port", "0", *flags],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and words in out.stderr and "Loading weights" not in out.stderr, (flags, out.stderr)


def test_each_tier_has_its_calibrator_checked_at_start_up(slm_executor, large, tmp_path):
    import dataclasses

    from corea_engine.evaluation.calibrators import Calibrator
    from corea_engine.policy import TierPolicy

    # fitted on answers that were all right: it maps every confidence near 1, so its tier accepts at 0.9
    cal = Calibrator.fit([0.1, 0.5, 0.9, 0.2], [1, 1, 1, 1], kind="histogram", model="stand-in-llm")
    path = tmp_path / "mid.json"
    cal.save(path)
    verdict = TierPolicy(0.9, calibrator=Calibrator.load(path)).judge(0.3, 0.5)
    assert not verdict.defers and verdict.calibrated == pytest.approx(float(cal.apply(0.3))) and "calibrated" in verdict.reason
    tiers = (TIERS[0], dataclasses.replace(TIERS[1], calibrator=str(path)), TIERS[2])
    config = CascadeConfig(**{**CONFIG, "tiers": tiers})
    mid_executor = stand_in_llm(slm_executor)  # model_name "stand-in-llm", as the calibrator says
    try:
        cascade = Cascade.tiered([slm_executor, mid_executor, ExecutorLLM(large)], config)
        assert cascade.tiers[1].policy.calibrator is not None and cascade.tiers[0].policy.calibrator is None
        with pytest.raises(ConfigError, match="calibrator of tier mid: calibrator was fitted for model 'stand-in-llm'"):
            Cascade.tiered([slm_executor, slm_executor, ExecutorLLM(large)], config)  # another model in the middle
        with pytest.raises(ConfigError, match="the last tier takes no calibrator"):
            CascadeConfig(tiers=(TIERS[0], dataclasses.replace(TIERS[1], calibrator=str(path)))).validate()
    finally:
        mid_executor.close()
