"""The confidence probe (corea_engine/runtime/probe.py): one spec per contract and tokenizer, read from
logits as the torch reference reads them, and from log-probabilities with the same result."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from corea_engine.contract import FORMATS, ConfidenceScale, build_messages
from corea_engine.runtime import Request, SamplingParams
from corea_engine.runtime.probe import ConfidenceProbe, read_logits, resolve
from corea_engine.runtime.sequence import encode_prompt
from corea_kernels import confidence_stats_reference, unpack_bitmask

FMT = FORMATS["json"].bounded(max_reasoning_chars=48, max_answer_chars=12)
QUESTION = "A baker makes 12 rolls and sells 5. How many rolls are left?"


def test_one_probe_per_contract_and_tokenizer(slm_executor):
    tok = slm_executor.tokenizer
    probe = ConfidenceProbe.for_format(FMT, tok)
    assert probe is ConfidenceProbe.for_format(FMT, tok)  # built once
    assert probe.token_ids == tuple(FMT.scale.token_ids(tok)) and probe.values == FMT.scale.values
    assert (probe.prefix, probe.stop_after, probe.suffix) == (FMT.confidence_prefix, True, "}")
    assert not ConfidenceProbe.for_format(FMT, tok, stop_after=False).stop_after
    assert not resolve(Request(prompt="q", contract=FMT, stop_at_confidence=False), tok)[1].stop_after
    first = ConfidenceProbe.for_format(FORMATS["tags_confidence_first"], tok)
    assert (first.prefix, first.stop_after, first.suffix) == ("<confidence>0.", False, "")
    # A request resolves to (grammar, probe): the contract's EBNF, or the caller's constraint and no probe.
    grammar, got = resolve(Request(prompt="q", contract=FMT), tok)
    assert (grammar.kind, grammar.source, got) == ("ebnf", FMT.ebnf(), probe)
    assert resolve(Request(prompt="q"), tok) == (None, None)
    # The sampled symbol's value: by token id, or a token that starts with the symbol.
    assert probe.value_of(probe.token_ids[7], "7") == 0.7 and probe.value_of(-1, "3}") == 0.3
    assert probe.value_of(-1, "x") is None


@pytest.fixture(scope="module")
def recorded(slm_executor):
    """A real greedy answer (run to its end), the raw logits at every output position (one teacher-forced
    pass) and the grammar's bitmask before each token."""
    import xgrammar as xgr

    from corea_engine.contract import GrammarCache

    request = Request(messages=build_messages(QUESTION, FMT), contract=FMT, stop_at_confidence=False,
                      sampling=SamplingParams(max_new_tokens=160))
    result = slm_executor.generate(request)
    assert result.finish_reason == "stop" and result.confidence is not None, result
    ids = result.token_ids
    prompt = encode_prompt(slm_executor.tokenizer, request)
    with torch.no_grad():
        logits = slm_executor.model(input_ids=torch.tensor([prompt + ids])).logits[0, len(prompt) - 1:-1].float()
    matcher = GrammarCache.for_tokenizer(slm_executor.tokenizer, slm_executor.vocab_size).matcher(FMT)
    masks = xgr.allocate_token_bitmask(len(ids), slm_executor.vocab_size)
    for i, token in enumerate(ids):
        matcher.fill_next_token_bitmask(masks, i)
        assert matcher.accept_token(token)
    return result, logits, masks


def test_reading_from_logits_equals_the_torch_reference(slm_executor, recorded):
    result, logits, masks = recorded
    tok = slm_executor.tokenizer
    probe = ConfidenceProbe.for_format(FMT, tok)
    five = ConfidenceProbe.for_format(
        dataclasses.replace(FMT, scale=ConfidenceScale(symbols=tuple("01234"), values=(0.0, 0.25, 0.5, 0.75, 1.0))), tok)
    # Rows of two scales and rows not read, as a batch holds them.
    scales = [(probe, five, None)[i % 3] for i in range(len(logits))]
    records = read_logits(logits, [p and p.scale_key for p in scales], masks)
    for i, (p, record) in enumerate(zip(scales, records)):
        if p is None:
            assert record is None
            continue
        want = confidence_stats_reference(logits[i:i + 1], torch.tensor(p.token_ids), torch.tensor(p.values),
                                          masks[i:i + 1])
        expected, mass, entropy, *probs = record
        assert expected == pytest.approx(float(want.expected[0]), abs=1e-6)
        assert mass == pytest.approx(float(want.mass[0]), abs=1e-6)
        assert entropy == pytest.approx(float(want.entropy[0]), abs=1e-5)
        assert probs == pytest.approx(want.probs[0].tolist(), abs=1e-6)
    # At the confidence position the executor made this reading in its batch: the same numbers.
    at = result.confidence.position
    reading = ConfidenceProbe.reading(read_logits(logits[at:at + 1], [probe.scale_key], masks[at:at + 1])[0],
                                      result.confidence.sampled, at)
    assert reading.mass > 0.99  # the grammar leaves only the scale there
    assert reading.expected == pytest.approx(result.confidence.expected, abs=1e-4)
    assert reading.probs == pytest.approx(result.confidence.probs, abs=1e-4)


def test_reading_from_logprobs_equals_the_reading_from_logits(slm_executor, recorded):
    _, logits, masks = recorded
    probe = ConfidenceProbe.for_format(FMT, slm_executor.tokenizer)
    allowed = unpack_bitmask(masks, logits.shape[1])
    # What an engine reports: log-probabilities under the grammar mask (SGLang clamps -inf to the float min).
    logprobs = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), -1).clamp(min=torch.finfo(torch.float32).min)
    from_logits = read_logits(logits, [probe.scale_key] * len(logits), masks)
    for i, want in enumerate(from_logits):
        got = probe.record_from_logprobs({t: float(logprobs[i, t]) for t in probe.token_ids})
        assert got == pytest.approx(want, abs=2e-5), i
    with pytest.raises(ValueError, match="no log-probability for scale token ids"):
        probe.record_from_logprobs({probe.token_ids[0]: 0.0})
