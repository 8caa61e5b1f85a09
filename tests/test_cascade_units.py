"""The cascade's parts that need no model: configuration, the circuit breaker, validation,
conversion to corea.v1 messages, and proto generation."""

from __future__ import annotations

import asyncio
import json
import math
import re

import pytest

from corea_engine import _protogen
from corea_engine.cascade import Cascade, CascadeConfig, InvalidSolveRequest, SolveRequest, SolveResult
from corea_engine.cascade_config import ConfigError
from corea_engine.escalation.breaker import CircuitBreaker


def test_config_file_then_environment(tmp_path):
    toml = tmp_path / "cascade.toml"
    toml.write_text('[cascade]\nthreshold = 0.7\nmode = "slm_only"\nllm_retries = 4\n')
    config = CascadeConfig.load(toml, env={"COREA_THRESHOLD": "0.3", "COREA_LLM_ADDRESS": "h:1"})
    assert (config.threshold, config.mode, config.llm_retries, config.llm_address) == (0.3, "slm_only", 4, "h:1")
    js = tmp_path / "cascade.json"
    js.write_text(json.dumps({"confidence_source": "sampled", "max_new_tokens": 64}))
    config = CascadeConfig.load(js, env={})
    assert config.confidence_source == "sampled" and config.max_new_tokens == 64 and config.threshold == 0.5


@pytest.mark.parametrize("env,message", [
    ({"COREA_THRESHOLD": "1.5"}, "threshold must be a number in [0, 1]"),
    ({"COREA_THRESHOLD": "nan"}, "threshold must be a number in [0, 1]"),
    ({"COREA_LLM_TIMEOUT_S": "nan"}, "llm_timeout_s must be a number > 0"),
    ({"COREA_LLM_TIMEOUT_S": "0"}, "llm_timeout_s must be a number > 0"),
    ({"COREA_MAX_NEW_TOKENS": "0"}, "max_new_tokens must be an integer in [1, 4096] or unset"),
    ({"COREA_MAX_NEW_TOKENS": "100000"}, "max_new_tokens must be an integer in [1, 4096]"),
    ({"COREA_LLM_PROMPT_PRICE": "inf"}, "llm_prompt_price must be a number in [0, 1000000]"),
    ({"COREA_SLM_COMPLETION_PRICE": "-1"}, "slm_completion_price must be a number in [0"),
    ({"COREA_RETRY_BACKOFF_S": "-inf"}, "retry_backoff_s must be a number in [0"),
    ({"COREA_BREAKER_FAILURES": "0"}, "breaker_failures must be an integer in [1"),
    ({"COREA_LLM_TEMPERATURE": "nan"}, "llm_temperature must be a number in [0, 10]"),
    ({"COREA_SLM_TEMPERATURE": "0.001"}, "slm_temperature: temperature must be 0 (greedy) or in [0.01"),
    ({"COREA_TIERS": '[{"name": "a", "temperature": 10.5}, {"name": "b"}]'}, "tier 0 ('a') temperature must be a number in [0, 10]"),
    ({"COREA_MAX_REASONING_CHARS": "0"}, "max_reasoning_chars must be an integer in [1"),
    ({"COREA_MAX_QUESTION_CHARS": "-5"}, "max_question_chars must be an integer in [1"),
    ({"COREA_THRESHOLD": "high"}, "threshold must be float"),
    ({"COREA_MODE": "llm_first"}, "mode must be one of"),
    ({"COREA_CONTRACT": "yaml"}, "unknown contract 'yaml'"),
    ({"COREA_LLM_RETRIES": "2.5"}, "llm_retries must be int"),
])
def test_config_names_the_bad_setting(env, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        CascadeConfig.load(env=env)


def test_every_numeric_setting_has_a_range_and_a_file_is_checked_too(tmp_path):
    from dataclasses import fields

    from corea_engine.cascade_config import NUMERIC_RANGES

    numeric = {f.name for f in fields(CascadeConfig) if f.type.split(" ")[0] in ("int", "float")}
    assert numeric == set(NUMERIC_RANGES)
    path = tmp_path / "c.json"
    path.write_text('{"breaker_cooldown_s": 1e400, "threshold": 0.5}')  # JSON reads 1e400 as inf
    with pytest.raises(ConfigError, match="breaker_cooldown_s must be a number in"):
        CascadeConfig.load(path, env={})
    with pytest.raises(ConfigError, match="llm_retries must be an integer"):
        CascadeConfig(llm_retries=True).validate()


@pytest.mark.parametrize("flags,env,message", [
    (["--grace-s", "nan"], {}, "argument --grace-s: must be in [0, 86400], got 'nan'"),
    (["--port", "70000"], {}, "argument --port: must be in [0, 65535]"),
    (["--max-inflight", "0"], {}, "argument --max-inflight: must be in [1"),
    (["--metrics-port", "-1"], {}, "argument --metrics-port: must be in [0, 65535]"),
    (["--max-new-tokens", "0"], {}, "max_new_tokens must be an integer in [1, 4096]"),
    (["--threshold", "inf"], {}, "threshold must be a number in [0, 1]"),
    ([], {"COREA_LLM_TIMEOUT_S": "nan"}, "llm_timeout_s must be a number > 0"),
    ([], {"COREA_MAX_NEW_TOKENS": "0"}, "max_new_tokens must be an integer in [1, 4096]"),
    ([], {"COREA_MAX_REQUEST_TOKENS": "0"}, "argument --max-request-tokens: must be in [1, 4096]"),
    ([], {"COREA_MAX_MESSAGE_BYTES": "-1"}, "argument --max-message-bytes: must be in [1"),
    ([], {"COREA_THREADS": "0"}, "COREA_THREADS must be in [1"),
    (["--tp-size", "0"], {}, "argument --tp-size: must be in [1"),
])
def test_serve_refuses_bad_numeric_settings_at_start_up_naming_them(flags, env, message):
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "corea_engine.cli", "serve", "--mode", "slm_only", "--no-metrics", *flags],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert done.returncode == 2 and message in done.stderr.strip().splitlines()[-1], done.stderr


@pytest.mark.parametrize("command", ["worker", "serve-llm"])
@pytest.mark.parametrize("flags,message", [
    (["--max-batch-size", "0"], "argument --max-batch-size: must be in [1"),
    (["--grace-s", "-1"], "argument --grace-s: must be in [0"),
    (["--mem-fraction-static", "nan"], "argument --mem-fraction-static: must be in [0.01, 1]"),
    (["--port", "70000"], "argument --port: must be in [0, 65535]"),
    (["--metrics-port", "-1"], "argument --metrics-port: must be in [0, 65535]"),
    (["--max-inflight", "-1"], "argument --max-inflight: must be in [1"),
])
def test_worker_refuses_bad_numeric_flags(command, flags, message):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "corea_engine.cli", command, *flags],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_config_refuses_unknown_keys(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("treshold = 0.2\n")
    with pytest.raises(ConfigError, match="unknown cascade setting.*treshold"):
        CascadeConfig.load(path, env={})


def test_costs_are_tokens_times_prices_per_1k():
    config = CascadeConfig(slm_prompt_price=1.0, slm_completion_price=2.0, llm_prompt_price=10.0, llm_completion_price=20.0)
    slm, llm = config.tier_costs(1000, 500, 2000, 100)
    assert math.isclose(slm, 1.0 + 1.0) and math.isclose(llm, 20.0 + 2.0)


def test_breaker_opens_half_opens_and_closes():
    now = [0.0]
    breaker = CircuitBreaker(failures=2, cooldown_s=10, clock=lambda: now[0])
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 10.0
    assert breaker.state == "half_open" and breaker.allow()
    assert not breaker.allow()  # one trial at a time
    breaker.record_failure()  # the trial failed: open again for another cool-down
    assert breaker.state == "open" and not breaker.would_allow()
    now[0] = 20.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow()


def test_a_call_the_half_open_breaker_refuses_leaves_the_trial_to_the_call_holding_it():
    from corea_engine.cascade_config import TierConfig
    from corea_engine.policy import TierPolicy
    from corea_engine.tiers import Attempt, Tier, call_client

    now = [0.0]
    breaker = CircuitBreaker(failures=1, cooldown_s=10, clock=lambda: now[0])
    breaker.record_failure()
    now[0] = 10.0
    assert breaker.allow()  # call A holds the one trial
    tier = Tier(1, TierConfig("llm"), None, TierPolicy(0.5), breaker)  # B is refused before the backend is read

    async def call_b():
        attempt = Attempt(1, "llm", "answer")
        async for _ in call_client(tier, attempt, [], None, 8, "b", None, CascadeConfig(llm_retries=0)):
            pass
        return attempt

    attempt = asyncio.run(call_b())
    assert attempt.unreachable and "half_open" in attempt.error
    assert not breaker.would_allow()  # still A's trial: no second one may start


@pytest.mark.parametrize("fields,message", [
    (dict(question=""), "question is empty"),
    (dict(question="q", threshold=float("nan")), "threshold"),
    (dict(question="q", threshold=1.01), "threshold"),
    (dict(question="q", mode="fast"), "mode must be one of"),
    (dict(question="q", confidence_source="vibes"), "confidence_source"),
    (dict(question="q", contract="xml"), "unknown contract"),
    (dict(question="q", max_new_tokens=0), None),  # 0 means the default, as in the proto
    (dict(question="q", timeout_s=-1), "timeout_s"),
])
def test_plan_validates_before_any_model_runs(fields, message):
    cascade = Cascade(None, None, CascadeConfig(max_reasoning_chars=50))
    if message is None:
        plan = cascade.plan(SolveRequest(**fields))
        assert plan.max_new_tokens is None and plan.fmt.max_reasoning_chars == 50
        return
    with pytest.raises(InvalidSolveRequest, match=message):
        cascade.plan(SolveRequest(**fields))


def test_result_round_trips_through_the_proto():
    from corea_engine.server.convert import from_response, from_solve_request, to_response, to_solve_request

    result = SolveResult(request_id="r", answer="5", reasoning="2+3", confidence_sampled=0.8, confidence_expected=0.71,
                         threshold=0.6, confidence_source="sampled", mode="slm_only", answered_by="slm",
                         slm_prompt_tokens=100, slm_completion_tokens=20, cost=0.5, llm_only_cost=2.0, text="{...}")
    assert from_response(to_response(result)) == result
    request = SolveRequest("q", request_id="x", threshold=0.0, mode="llm_only", confidence_source="expected", contract="tags")
    back = to_solve_request(from_solve_request(request))
    assert back == request  # threshold 0.0 survives: the field has presence


def test_protos_generate_into_a_fresh_folder(tmp_path):
    written = _protogen.generate(out_dir=tmp_path)
    assert {p.name for p in written} >= {"corea_pb2.py", "corea_pb2_grpc.py"}
    grpc_module = (tmp_path / "corea_pb2_grpc.py").read_text()
    assert "from . import corea_pb2" in grpc_module and "from corea.v1" not in grpc_module
    assert not _protogen.is_stale(out_dir=tmp_path)
    (tmp_path / "corea_pb2.py").unlink()
    assert _protogen.is_stale(out_dir=tmp_path)


def test_openai_escalation_settings_reach_the_client():
    from corea_engine.escalation.factory import make_client

    env = {"COREA_LLM_OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "COREA_LLM_MODEL": "m",
           "COREA_LLM_RESPONSE_FORMAT": "off", "COREA_LLM_TOKENIZER": "smollm2-135m"}
    client = make_client(CascadeConfig.load(env=env))
    assert client.response_format is False and client.tokenizer is not None
    assert make_client(CascadeConfig.load(env={**env, "COREA_LLM_TOKENIZER": ""})).tokenizer is None
    with pytest.raises(ConfigError, match="llm_response_format must be true or false, got 'maybe'"):
        CascadeConfig.load(env={**env, "COREA_LLM_RESPONSE_FORMAT": "maybe"})
    with pytest.raises(ConfigError, match="llm_tokenizer '/nonexistent'"):
        make_client(CascadeConfig.load(env={**env, "COREA_LLM_TOKENIZER": "/nonexistent"}))
    with pytest.raises(ConfigError, match=r"tier 1 \('llm'\): openai_base_url needs model"):
        CascadeConfig.load(env={"COREA_LLM_OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})  # at start-up, not at the client


def test_a_tiers_tokenizer_is_checked_at_start_up_and_named_in_errors(tmp_path):
    from pathlib import Path

    from corea_engine.cascade_config import TierConfig
    from corea_engine.escalation.factory import make_tier_client, tokenizer_folder

    tiers = (TierConfig("a"), TierConfig("mid", address="127.0.0.1:9", tokenizer="/no/such/dir"), TierConfig("c"))
    with pytest.raises(ConfigError, match=re.escape("tier 1 ('mid') tokenizer '/no/such/dir' is not 'smollm2-135m'")):
        CascadeConfig(tiers=tiers).validate()
    # a model spec reaches the executor as the folder it names, not as a path
    assert (Path(tokenizer_folder("smollm2-135m", "mid tokenizer")) / "tokenizer.json").is_file()
    with pytest.raises(ConfigError, match="^mid tokenizer: model '.*' not found"):  # a folder, but no model in it
        make_tier_client(TierConfig("mid", address="127.0.0.1:9", tokenizer=str(tmp_path)), CascadeConfig())
