"""The executor's reading of SGLang's streamed chunks, on recorded SGLang-shaped outputs.

The chunks are built as SGLang's tokenizer manager streams them by default (non-incremental:
cumulative output_ids and meta_info; output_token_ids_logprobs holds, per output position, a
list of (logprob, token_id, text-or-None) for the requested ids; finish_reason a dict or None).
Their numbers come from the real SmolLM2: a torch-executor run gives the tokens, one
teacher-forced forward pass gives the logits SGLang would have had at each position, masked by
the grammar as SGLang's sampler does before computing log-probabilities. The decoded results must
be the torch executor's: same text, finish reason, tokens and confidence.
"""

from __future__ import annotations

import weakref

import pytest
import torch

from sglang_helpers import (
    recorded,
    sglang_chunks,
    RequestRecordSink,
    FORMATS_UNDER_TEST,
    apply_custom_logit_processor,
    request_for,
    sglang_batch,
)

from corea_engine.cascade import check_contract
from corea_engine.contract import FORMATS
from corea_engine.runtime.executor import ConfidenceEvent, FinishedEvent, Request, SamplingParams, TokenEvent
from corea_engine.runtime.probe import ConfidenceProbe
from corea_engine.runtime.sglang_executor import ChunkDecoder
from corea_engine.runtime.sglang_protocol import (
    DEVICE_CONFIDENCE_KEY,
    PARAM_SCALE_IDS,
    PARAM_SCALE_VALUES,
    confidence_stop_regex,
)
from corea_kernels import confidence_stats_reference

def decode(decoder, seq, chunks):
    reason = error = None
    for chunk in chunks:
        reason, error = decoder.on_chunk(seq, chunk)
        if reason is not None:
            break
    return decoder.result(seq, reason, error)


def drain(seq):
    events = []
    while not seq.stream._queue.empty():
        events.append(seq.stream._queue.get())
    return events


def assert_same_reading(got, want, tol=2e-4):
    assert got.sampled == want.sampled and got.position == want.position
    assert abs(got.expected - want.expected) < tol and abs(got.mass - want.mass) < tol
    assert abs(got.entropy - want.entropy) < 5 * tol
    assert max(abs(a - b) for a, b in zip(got.probs, want.probs)) < tol


@pytest.mark.parametrize("name", list(FORMATS_UNDER_TEST))
def test_decoded_results_match_the_torch_executor(slm_executor, name):
    fmt = FORMATS_UNDER_TEST[name]
    want, _, _, entries = recorded(slm_executor, name)
    decoder = ChunkDecoder(slm_executor.tokenizer)
    seq = decoder.new_sequence(request_for(name))
    eos = slm_executor.tokenizer.eos_token_id
    if fmt.confidence_first:
        # Ends on the end-of-sequence token, which SGLang keeps in output_ids (no_stop_trim).
        assert want.finish_reason == "stop", want
        tokens, finish = want.token_ids + [eos], {"type": "stop", "matched": eos}
        entries = entries + [entries[-1]]
    else:
        # The stop regex matches on the confidence symbol's token, the last one.
        assert want.finish_reason == "confidence", want
        tokens, finish = want.token_ids, {"type": "stop", "matched": confidence_stop_regex(fmt)}
    got = decode(decoder, seq, sglang_chunks(seq, tokens, entries, finish))
    assert (got.text, got.finish_reason, got.token_ids) == (want.text, want.finish_reason, want.token_ids)
    assert check_contract(fmt, got.text, got.finish_reason) == check_contract(fmt, want.text, want.finish_reason)
    assert got.prompt_tokens == want.prompt_tokens
    assert_same_reading(got.confidence, want.confidence)
    # Events: one TokenEvent per token, the ConfidenceEvent right after the symbol's token.
    events = drain(seq)
    kinds = [type(e) for e in events]
    token_events = [e for e in events if isinstance(e, TokenEvent)]
    assert [e.token_id for e in token_events if e.token_id is not None] == want.token_ids
    assert kinds.count(ConfidenceEvent) == 1 and kinds.index(ConfidenceEvent) == want.confidence.position + 1
    # The probe's suffix, forced by the grammar and never sampled, is streamed last, with no token.
    assert "".join(e.text for e in token_events) == want.text
    assert (token_events[-1].token_id is None) == (not fmt.confidence_first)


def test_compact_logprob_row_gives_the_full_row_statistics_at_every_position(slm_executor):
    # At positions other than the confidence one the scale holds little mass: the rest-of-vocabulary
    # term of the compact row must carry it for mass, expected value and entropy to come out right.
    _, logits, masks, entries = recorded(slm_executor, "json")
    fmt = FORMATS_UNDER_TEST["json"]
    probe = ConfidenceProbe.for_format(fmt, slm_executor.tokenizer)
    scale_ids = list(probe.token_ids)
    want = confidence_stats_reference(logits, torch.tensor(scale_ids), torch.tensor(fmt.scale.values), masks[:-1])
    masses = []
    for p, row_entries in enumerate(entries):
        # As the executor reads SGLang's output_token_ids_logprobs row: through the probe.
        expected, mass, entropy, *probs = probe.record_from_logprobs({t: lp for lp, t, *_ in row_entries})
        torch.testing.assert_close(torch.tensor(probs), want.probs[p], atol=2e-6, rtol=1e-4)
        assert abs(mass - float(want.mass[p])) < 2e-5  # fp32 sums of ~50k terms
        if float(want.mass[p]) > 1e-3:
            assert abs(expected - float(want.expected[p])) < 1e-4
            assert abs(entropy - float(want.entropy[p])) < 1e-3
        masses.append(float(want.mass[p]))
    assert min(masses) < 1e-3 and max(masses) > 0.99  # both kinds of position were covered


def test_device_records_give_the_same_reading(slm_executor):
    # confidence_source="device": the records come from the ConfidenceRecorder run, one SGLang
    # sampling step per output position, through SGLang's apply_custom_logit_processor.
    from corea_engine.runtime.sglang_plugin import ConfidenceRecorder
    from corea_kernels import unpack_bitmask

    name = "tags"
    fmt = FORMATS_UNDER_TEST[name]
    want, logits, masks, entries = recorded(slm_executor, name)
    masked = logits.masked_fill(~unpack_bitmask(masks[:-1], logits.shape[1]), float("-inf"))
    sink = RequestRecordSink()
    params = {
        PARAM_SCALE_IDS: fmt.scale.token_ids(slm_executor.tokenizer),
        PARAM_SCALE_VALUES: list(fmt.scale.values),
        "__req__": weakref.proxy(sink),
    }
    processor_str = ConfidenceRecorder.to_str()
    apply = apply_custom_logit_processor()
    for p in range(len(want.token_ids)):
        step = masked[p : p + 1].clone()
        apply(step, sglang_batch(step, [params], processor_str, rows=[0]))
    records = sink.customized_info[DEVICE_CONFIDENCE_KEY]
    decoder = ChunkDecoder(slm_executor.tokenizer, "device")
    seq = decoder.new_sequence(request_for(name))
    finish = {"type": "stop", "matched": confidence_stop_regex(fmt)}
    chunks = sglang_chunks(seq, want.token_ids, [None] * len(entries), finish, extra_meta={DEVICE_CONFIDENCE_KEY: records})
    got = decode(decoder, seq, chunks)
    assert (got.text, got.finish_reason) == (want.text, "confidence")
    assert_same_reading(got.confidence, want.confidence)


def test_abort_length_and_error_finishes(slm_executor):
    decoder = ChunkDecoder(slm_executor.tokenizer)
    want, _, _, entries = recorded(slm_executor, "json")
    tokens = want.token_ids[:5]

    seq = decoder.new_sequence(request_for("json"))
    seq.abort_requested = True
    got = decode(decoder, seq, sglang_chunks(seq, tokens, entries, {"type": "abort", "message": "Abort in waiting queue"}))
    assert got.finish_reason == "abort" and got.token_ids == tokens and got.confidence is None

    seq = decoder.new_sequence(request_for("json", max_new_tokens=5))
    got = decode(decoder, seq, sglang_chunks(seq, tokens, entries, {"type": "length", "length": 5}))
    assert got.finish_reason == "length" and check_contract(FORMATS["json"], got.text, got.finish_reason)[1]  # cut before the answer

    seq = decoder.new_sequence(request_for("json"))
    bad = {"type": "abort", "message": "grammar failed to compile", "status_code": 400}
    got = decode(decoder, seq, sglang_chunks(seq, [], [], bad))
    assert got.finish_reason == "error" and got.error == "grammar failed to compile"


def test_missing_logprobs_at_the_confidence_position_fail_loudly(slm_executor):
    from corea_engine.runtime.executor import ExecutorError

    want, _, _, entries = recorded(slm_executor, "json")
    decoder = ChunkDecoder(slm_executor.tokenizer)
    seq = decoder.new_sequence(request_for("json"))
    chunks = sglang_chunks(seq, want.token_ids, entries[:-1], None, every=len(want.token_ids))
    with pytest.raises(ExecutorError, match="no scale log-probabilities"):
        decode(decoder, seq, chunks)


def test_free_text_requests_stream_without_confidence(slm_executor):
    decoder = ChunkDecoder(slm_executor.tokenizer)
    request = Request(prompt="Count: one, two,", sampling=SamplingParams(max_new_tokens=4))
    seq = decoder.new_sequence(request)
    tokens = slm_executor.tokenizer.encode(" three, four", add_special_tokens=False)
    got = decode(decoder, seq, sglang_chunks(seq, tokens, [None] * len(tokens), {"type": "length", "length": len(tokens)}))
    assert got.text == " three, four" and got.finish_reason == "length" and got.confidence is None
    assert [type(e) for e in drain(seq)] == [TokenEvent] * len(tokens) + [FinishedEvent]
