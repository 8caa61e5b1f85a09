"""One request's sampling parameters can end only that request (issue #20, item 1).

On the real SmolLM2: parameters outside the numerically safe ranges are refused at submit, naming
the field; parameters at the edges of the ranges run beside a normal request; a row whose sampling
fails anyway (its parameters changed after validation, as a gap in validation would let through)
ends alone with an error. In every case the normal request's tokens equal its solo run.
"""

from __future__ import annotations

import grpc
import pytest

from corea_engine.contract import FORMATS, build_messages
from corea_engine.runtime import FinishedEvent, InvalidRequestError, Request, SamplingParams, TokenEvent
from corea_engine.runtime.executor import MAX_SEED, MAX_TEMPERATURE, MIN_TEMPERATURE, MIN_TOP_P

FMT = FORMATS["json"].bounded(max_reasoning_chars=48, max_answer_chars=12)


def request(question, **sampling):
    return Request(messages=build_messages(question, FMT), contract=FMT, sampling=SamplingParams(**sampling))


@pytest.fixture(scope="module")
def solo(slm_executor, gsm8k_questions):
    """The normal request (greedy) run alone: what it must produce whatever runs beside it."""
    return slm_executor.generate(request(gsm8k_questions[3]))


@pytest.mark.parametrize("sampling, field", [
    (dict(temperature=1e-300), "temperature"),
    (dict(temperature=MIN_TEMPERATURE / 2), "temperature"),
    (dict(temperature=-0.5), "temperature"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(temperature=True), "temperature"),
    (dict(temperature=1.0, top_p=1e-300), "top_p"),
    (dict(temperature=1.0, top_p=float("nan")), "top_p"),
    (dict(temperature=1.0, seed=-1), "seed"),
    (dict(temperature=1.0, seed=MAX_SEED + 1), "seed"),
])
def test_unsafe_parameters_are_refused_naming_the_field(slm_executor, gsm8k_questions, solo, sampling, field):
    running = slm_executor.submit(request(gsm8k_questions[3]))
    with pytest.raises(InvalidRequestError, match=field):
        slm_executor.submit(request(gsm8k_questions[4], **sampling))
    assert running.wait(timeout=300).token_ids == solo.token_ids


def test_parameters_at_the_edges_of_the_ranges_run_beside_a_normal_request(slm_executor, gsm8k_questions, solo):
    edges = [dict(temperature=MIN_TEMPERATURE, seed=1), dict(temperature=MAX_TEMPERATURE, seed=2),
             dict(temperature=1.0, top_p=MIN_TOP_P, seed=MAX_SEED), dict(temperature=MIN_TEMPERATURE, top_p=MIN_TOP_P)]
    normal = slm_executor.submit(request(gsm8k_questions[3]))
    others = [slm_executor.submit(request(gsm8k_questions[4], max_new_tokens=12, **s)) for s in edges]
    assert normal.wait(timeout=300).token_ids == solo.token_ids
    for stream in others:
        result = stream.wait(timeout=300)
        assert result.finish_reason in ("length", "stop", "confidence") and result.error is None, result


@pytest.mark.parametrize("broken, fails", [
    (dict(temperature=1e-300), True), (dict(temperature=float("nan")), True),
    (dict(top_p=1e-300), False),  # underflows to 0 in float32: the top token is kept regardless
])
def test_a_row_whose_sampling_fails_ends_alone(slm_executor, gsm8k_questions, solo, broken, fails):
    normal = slm_executor.submit(request(gsm8k_questions[3]))
    victim_request = request(gsm8k_questions[4], temperature=1.0, seed=5)
    victim = slm_executor.submit(victim_request)
    for event in victim:  # once it is in the batch, break its parameters behind validation's back
        if isinstance(event, TokenEvent):
            for name, value in broken.items():
                setattr(victim_request.sampling, name, value)
            break
        assert not isinstance(event, FinishedEvent), event
    failed = victim.wait(timeout=300)
    if fails:
        assert failed.finish_reason == "error" and failed.error.startswith("sampling failed"), failed
    else:
        assert failed.finish_reason == "confidence" and failed.error is None, failed
    assert normal.wait(timeout=300).token_ids == solo.token_ids
    # The engine keeps serving.
    assert slm_executor.generate(request(gsm8k_questions[3])).token_ids == solo.token_ids


def test_the_llm_tier_refuses_unsafe_parameters_while_the_cascade_is_served(slm_executor, gsm8k_questions):
    """`corea serve` escalating to a `corea worker`: an attacker's unsafe Generate calls on the
    LLM tier are INVALID_ARGUMENT and the cascade's own llm_only answer is what it is alone."""
    from smg_grpc_proto.generated import sglang_scheduler_pb2 as pb, sglang_scheduler_pb2_grpc as pb_grpc

    from cascade_servers import corea_server, llm_server, stand_in_llm
    from corea_engine.protos import corea_pb2, corea_pb2_grpc

    llm = stand_in_llm(slm_executor)
    question = corea_pb2.SolveRequest(question=gsm8k_questions[3], mode=corea_pb2.ROUTING_MODE_LLM_ONLY)
    try:
        with llm_server(llm) as tier, corea_server(slm_executor, tier.address) as corea:
            with grpc.insecure_channel(corea.address) as cc, grpc.insecure_channel(tier.address) as lc:
                solve, generate = corea_pb2_grpc.CoreaStub(cc).Solve, pb_grpc.SglangSchedulerStub(lc).Generate
                prompt = pb.TokenizedInput(input_ids=llm.tokenizer.encode("Count to ten."))
                alone = solve(question, timeout=300)
                beside = solve.future(question, timeout=300)
                # The protocol's floats are float32 (1e-300 arrives as 0: greedy, or top_p unset), so
                # the attacks are the smallest values it can carry.
                for attack in (dict(temperature=1e-30), dict(temperature=1.0, top_p=1e-30),
                               dict(temperature=5e-3), dict(temperature=float("nan"))):
                    with pytest.raises(grpc.RpcError) as err:
                        list(generate(pb.GenerateRequest(tokenized=prompt, sampling_params=pb.SamplingParams(
                            max_new_tokens=64, **attack)), timeout=60))
                    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
                    assert ("top_p" if "top_p" in attack else "temperature") in err.value.details()
                result = beside.result()
        assert (result.text, result.llm_tokens.completion_tokens) == (alone.text, alone.llm_tokens.completion_tokens)
        assert not result.degraded
    finally:
        llm.close()


@pytest.mark.parametrize("name", ["slm_temperature", "llm_temperature"])
@pytest.mark.parametrize("value", [1e-300, MIN_TEMPERATURE / 2, -1.0, float("nan")])
def test_the_cascade_settings_take_the_same_ranges(name, value):
    from corea_engine.cascade_config import CascadeConfig, ConfigError

    # Outside [0, 10] the general range check speaks first; inside it, the sampling rule.
    with pytest.raises(ConfigError, match=rf"{name}(: temperature must be 0| must be a number in \[0, 10\])"):
        CascadeConfig(**{name: value}).validate()


@pytest.mark.parametrize("sampling", [
    SamplingParams(temperature=MIN_TEMPERATURE, top_p=MIN_TOP_P, seed=0),
    SamplingParams(temperature=MAX_TEMPERATURE, top_p=1.0, seed=MAX_SEED),
])
def test_the_edges_of_our_ranges_pass_sglangs_own_checks(slm_executor, sampling):
    """The SGLang runtime gets what the same validation admitted: SGLang must take it too."""
    from corea_engine.runtime.sglang_protocol import build_sampling_params
    from test_sglang_protocol import sglang_sampling_params

    request = Request(prompt="What is 2 + 3?", contract=FMT, sampling=sampling)
    request.validate(max_prompt_chars=100)
    params = sglang_sampling_params(build_sampling_params(request, device_confidence_ids=list(range(10))),
                                    slm_executor.tokenizer, slm_executor.vocab_size)
    assert (params.temperature, params.top_p) == (sampling.temperature, sampling.top_p)
