"""The requests we send SGLang pass SGLang's own SamplingParams checks; the stop regex fires where it should."""

from __future__ import annotations

import re

import pytest

from sglang_helpers import FORMATS_UNDER_TEST, real_runs, request_for

from corea_engine.contract import FORMATS
from corea_engine.runtime.executor import Request, SamplingParams
from corea_engine.runtime.sglang_executor import ChunkDecoder, sglang_rid
from corea_engine.runtime.sglang_protocol import build_sampling_params, confidence_stop_regex


def sglang_sampling_params(ours: dict, tokenizer, vocab_size: int):
    from sglang.srt.sampling.sampling_params import SamplingParams as SglangSamplingParams

    params = SglangSamplingParams(**ours)
    params.normalize(tokenizer)
    params.verify(vocab_size)
    return params


@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("sampling", [SamplingParams(), SamplingParams(temperature=0.7, top_p=0.9, seed=7, max_new_tokens=64)])
def test_sampling_params_pass_sglang_checks(slm_executor, name, sampling):
    request = Request(prompt="What is 2 + 3?", contract=name, sampling=sampling)
    ours = build_sampling_params(request, device_confidence_ids=list(range(10)))
    params = sglang_sampling_params(ours, slm_executor.tokenizer, slm_executor.vocab_size)
    fmt = FORMATS[name]
    assert params.ebnf == fmt.ebnf() and params.json_schema is None and params.regex is None
    assert params.max_new_tokens == request.max_new_tokens
    assert params.no_stop_trim is True  # the confidence digit stays in the text
    if sampling.temperature == 0:
        assert params.top_k == 1  # SGLang's greedy
    else:
        assert (params.temperature, params.top_p, params.sampling_seed) == (0.7, 0.9, 7)
    if fmt.confidence_first:
        assert params.stop_regex_strs == []
    else:
        assert params.stop_regex_strs == [confidence_stop_regex(fmt)]
        assert params.stop_regex_max_len >= len(fmt.confidence_prefix) + 1
    # custom_params must be JSON scalars/lists: they cross SGLang's msgpack IPC.
    assert params.custom_params["corea_scale_values"] == list(fmt.scale.values)


def test_free_text_request_has_no_grammar_and_no_logprob_request(slm_executor):
    request = Request(prompt="Say hi.", sampling=SamplingParams(max_new_tokens=8))
    params = sglang_sampling_params(build_sampling_params(request), slm_executor.tokenizer, slm_executor.vocab_size)
    assert params.ebnf is None and params.stop_regex_strs == [] and params.custom_params is None
    kwargs = ChunkDecoder(slm_executor.tokenizer).generate_kwargs(ChunkDecoder(slm_executor.tokenizer).new_sequence(request))
    assert "token_ids_logprob" not in kwargs and kwargs["stream"] is True


def test_sglang_refuses_what_we_must_not_send(slm_executor):
    # The checks above are SGLang's and they do refuse: two grammars, or an out-of-range top_p.
    from sglang.srt.sampling.sampling_params import SamplingParams as SglangSamplingParams

    ours = build_sampling_params(Request(prompt="q", contract="json"))
    with pytest.raises(ValueError, match="Only one of"):
        SglangSamplingParams(**ours, regex="a+").verify(slm_executor.vocab_size)
    with pytest.raises(ValueError, match="top_p"):
        SglangSamplingParams(**{**ours, "top_p": 0.0}).verify(slm_executor.vocab_size)


def test_generate_kwargs_ask_for_scale_logprobs(slm_executor):
    decoder = ChunkDecoder(slm_executor.tokenizer, "device")
    seq = decoder.new_sequence(request_for("json"))
    kwargs = decoder.generate_kwargs(seq)
    scale_ids = FORMATS["json"].scale.token_ids(slm_executor.tokenizer)
    assert kwargs["return_logprob"] is True and kwargs["token_ids_logprob"] == scale_ids
    assert kwargs["input_ids"] == seq.prompt_ids and kwargs["rid"] == seq.rid
    assert kwargs["sampling_params"]["custom_params"]["corea_scale_ids"] == scale_ids
    from sglang.srt.sampling.custom_logit_processor import CustomLogitProcessor

    assert type(CustomLogitProcessor.from_str(kwargs["custom_logit_processor"])).__name__ == "ConfidenceRecorder"


@pytest.mark.parametrize("name", [n for n, f in FORMATS_UNDER_TEST.items() if not f.confidence_first])
def test_stop_regex_fires_on_the_confidence_symbol_of_real_outputs(slm_executor, name):
    # SGLang searches the pattern in the decoded tail after every token; here every prefix of a
    # real constrained output is searched: the first match must be the confidence symbol's token.
    result = real_runs(slm_executor)[name]
    assert result.finish_reason == "confidence", result
    pattern = confidence_stop_regex(FORMATS_UNDER_TEST[name])
    tokenizer = slm_executor.tokenizer
    first = next(
        (n for n in range(1, len(result.token_ids) + 1) if re.search(pattern, tokenizer.decode(result.token_ids[:n]))),
        None,
    )
    assert first == result.confidence.position + 1 == len(result.token_ids)


def test_request_ids_are_prefix_free():
    # SGLang's scheduler aborts every request whose id starts with the given one.
    ids = [sglang_rid() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert len({len(i) for i in ids}) == 1  # equal lengths: no id is a proper prefix of another


@pytest.mark.parametrize("kind,source,field", [("json_schema", '{"type": "integer"}', "json_schema"),
                                               ("regex", "[0-9]+", "regex"), ("ebnf", 'root ::= "yes" | "no"', "ebnf")])
def test_token_ids_constraints_and_stops_pass_sglang_checks(slm_executor, kind, source, field):
    from corea_engine.runtime.executor import Constraint

    request = Request(input_ids=[1, 2, 3], constraint=Constraint(kind, source),
                      sampling=SamplingParams(temperature=0.5, top_k=5, stop=("\n\n",), stop_token_ids=(2,), max_new_tokens=9))
    params = sglang_sampling_params(build_sampling_params(request), slm_executor.tokenizer, slm_executor.vocab_size)
    assert getattr(params, field) == source and params.top_k == 5 and params.max_new_tokens == 9
    assert params.stop_strs == ["\n\n"] and 2 in params.stop_token_ids
    decoder = ChunkDecoder(slm_executor.tokenizer)
    assert decoder.generate_kwargs(decoder.new_sequence(request))["input_ids"] == [1, 2, 3]
