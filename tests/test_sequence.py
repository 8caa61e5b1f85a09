"""The shared per-request Sequence (corea_engine/runtime/sequence.py) on the real SmolLM2 tokenizer:
incremental text equals a full decode, and stop strings cut without ever streaming past the stop,
in isolation and through both the torch executor and the remote one (a real worker on loopback)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cascade_servers import worker_server
from corea_engine.runtime import FinishedEvent, Request, SamplingParams, TokenEvent
from corea_engine.runtime.remote_executor import RemoteExecutor
from corea_engine.runtime.sequence import Detokenizer, Sequence, StopStrings

REFERENCE = json.loads((Path(__file__).parent / "data" / "greedy_reference.json").read_text())["outputs"]
# Multi-byte characters that byte-level BPE splits across tokens, in several scripts.
HARD_TEXT = "Привет, 世界! 🍎🍏 naïve café — 3×4=12 ✓ 🧑‍🚀 done"


@pytest.fixture(scope="module")
def tokenizer(slm_executor):
    return slm_executor.tokenizer


def events_of(seq: Sequence) -> list:
    out = []
    while not seq.stream._queue.empty():
        out.append(seq.stream._queue.get())
    return out


def feed(tokenizer, token_ids, **sampling) -> tuple[Sequence, list]:
    seq = Sequence(Request(prompt="p", sampling=SamplingParams(max_new_tokens=len(token_ids), **sampling)), [0],
                   tokenizer)
    for token in token_ids:
        seq.step(token)
        if seq.finish_reason is not None:
            break
    return seq, events_of(seq)


def test_detokenizer_equals_a_full_decode_on_the_recorded_generations(tokenizer):
    for key, ids in REFERENCE.items():
        detok = Detokenizer(tokenizer)
        deltas = [detok.add(t) for t in ids]
        assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True), key
        assert not any("\ufffd" in d for d in deltas), key


def test_detokenizer_decodes_as_the_tokenizer_does_with_and_without_space_clean_up(tokenizer):
    """The backend shortcut is taken only where the tokenizer would not clean up spaces; a tokenizer
    that would goes through its own decode. Both equal a full decode."""
    import copy

    cleaning = copy.deepcopy(tokenizer)
    cleaning.clean_up_tokenization_spaces = True
    for tok, shortcut in ((tokenizer, True), (cleaning, False)):
        detok = Detokenizer(tok)
        assert (detok._backend_decode is not None) == shortcut
        for key, ids in list(REFERENCE.items())[:5]:
            detok = Detokenizer(tok)
            assert "".join(detok.add(t) for t in ids) == tok.decode(ids, skip_special_tokens=True), key


def test_detokenizer_holds_back_half_characters(tokenizer):
    ids = tokenizer.encode(HARD_TEXT, add_special_tokens=False)
    assert any(tokenizer.decode([t]).endswith("\ufffd") for t in ids)  # the text does split characters
    detok = Detokenizer(tokenizer)
    deltas = [detok.add(t) for t in ids]
    assert "".join(deltas) == HARD_TEXT and "" in deltas and not any("\ufffd" in d for d in deltas)


@pytest.mark.parametrize("stop", ["世界! 🍎", "café — 3", "e c"])
def test_a_stop_string_spanning_tokens_cuts_before_it_and_is_never_streamed(tokenizer, stop):
    ids = tokenizer.encode(HARD_TEXT, add_special_tokens=False)
    seq, events = feed(tokenizer, ids, stop=(stop, "never there"))
    want = HARD_TEXT[:HARD_TEXT.index(stop)]
    streamed = "".join(e.text for e in events if isinstance(e, TokenEvent))
    assert (seq.result.text, seq.result.finish_reason, seq.result.matched_stop) == (want, "stop", stop)
    assert streamed == want  # nothing at or past the stop went out, and all before it did
    assert isinstance(events[-1], FinishedEvent)
    # The stop spans tokens: its first characters were decoded a step or more before it completed.
    assert len(tokenizer.decode(ids[:len(seq.generated) - 1])) > len(want)


def test_text_that_may_start_a_stop_string_waits_and_is_released_when_it_does_not():
    stops = StopStrings(["four five", "xyz"])
    assert stops.held_back("one two fo") == 2 and stops.held_back("one two four fi") == 7
    assert stops.held_back("one two") == 0 and stops.held_back("abc x") == 1
    assert stops.find("one four five", 0) == (4, "four five") and stops.find("one four fiv", 0) is None


def test_held_back_text_is_streamed_once_it_cannot_be_a_stop(tokenizer):
    ids = tokenizer.encode(" one two three four six", add_special_tokens=False)
    seq, events = feed(tokenizer, ids, stop=("four five",))
    deltas = [e.text for e in events if isinstance(e, TokenEvent)]
    assert "".join(deltas) == " one two three four six" == seq.result.text
    assert seq.result.finish_reason == "length"
    assert not any(d.endswith(" four") for d in deltas[:-1])  # " four" waited for the next token


@pytest.mark.parametrize("end", ["eos", "engine"])
def test_held_back_text_is_streamed_when_the_request_ends_without_a_stop_string(tokenizer, end):
    # " four" may start "four five": held back while running, it is part of the answer once the
    # request ends on end-of-sequence (the executors' stops_on path) or on the engine's own finish.
    ids = tokenizer.encode(" one two four", add_special_tokens=False)
    seq = Sequence(Request(prompt="p", sampling=SamplingParams(max_new_tokens=16, stop=("four five",))), [0],
                   tokenizer, eos_token_ids=(tokenizer.eos_token_id,))
    for token in ids:
        seq.step(token)
    assert seq.text[seq.streamed:] == "four"  # the stop's possible start waited
    if end == "eos":
        assert seq.stops_on(tokenizer.eos_token_id)
        seq.finish("stop", matched_stop=tokenizer.eos_token_id)
    else:
        seq.finish("stop")
    events = events_of(seq)
    streamed = "".join(e.text for e in events if isinstance(e, TokenEvent))
    assert streamed == seq.result.text == " one two four"
    assert [e.token_id for e in events if isinstance(e, TokenEvent)] == [*ids, None]  # the flush is no token
    assert isinstance(events[-1], FinishedEvent) and seq.result.token_ids == ids


@pytest.fixture(scope="module")
def remote(slm_executor):
    worker = worker_server(slm_executor)
    executor = RemoteExecutor(worker.address)
    yield executor
    executor.close()
    worker.close()


def _generate(executor, request: Request) -> tuple[list[str], object]:
    deltas, result = [], None
    for event in executor.submit(request):
        if isinstance(event, TokenEvent):
            deltas.append(event.text)
        elif isinstance(event, FinishedEvent):
            result = event.result
    return deltas, result


EMOJI_PROMPT = [{"role": "user", "content": "Reply with emoji only: 🍎🍎🍎 + 🍎🍎 = ?"}]
WORDS_PROMPT = [{"role": "user", "content": "Count from one to twenty in words, separated by commas."}]


@pytest.mark.parametrize("path", ["torch", "remote"])
def test_executors_stream_exactly_the_full_decode_and_cut_at_a_stop_string(slm_executor, remote, tokenizer, path):
    executor = slm_executor if path == "torch" else remote
    # A real generation with multi-byte characters: the streamed text is the full decode.
    deltas, full = _generate(executor, Request(messages=EMOJI_PROMPT, sampling=SamplingParams(max_new_tokens=24)))
    assert "".join(deltas) == full.text == tokenizer.decode(full.token_ids, skip_special_tokens=True)
    assert any(tokenizer.decode([t]).endswith("\ufffd") for t in full.token_ids), full.text  # split characters
    # A stop string that spans two tokens of a real generation, a few tokens in.
    deltas, words = _generate(executor, Request(messages=WORDS_PROMPT, sampling=SamplingParams(max_new_tokens=32)))
    assert "".join(deltas) == words.text
    boundary = len(tokenizer.decode(words.token_ids[:8], skip_special_tokens=True))
    stop = words.text[boundary - 2:boundary + 3]
    assert words.text.index(stop) == boundary - 2, stop
    deltas, cut = _generate(executor, Request(messages=WORDS_PROMPT,
                                              sampling=SamplingParams(max_new_tokens=32, stop=(stop,))))
    assert (cut.text, cut.finish_reason, cut.matched_stop) == (words.text[:boundary - 2], "stop", stop)
    assert "".join(deltas) == cut.text  # nothing at or past the stop was streamed
    # It ended on the token that completed the stop string.
    need = next(n for n in range(1, len(words.token_ids) + 1) if stop in tokenizer.decode(words.token_ids[:n]))
    assert cut.token_ids == words.token_ids[:need]
