"""One request's output side, shared by every executor (torch, SGLang, remote).

An executor decides which token comes next; a `Sequence` takes it from there:

* `Detokenizer`: incremental text, decoding only a window of a few tokens per token (the offsets
  of vLLM's detokenizer); half a multi-byte character is held back until it completes;
* `StopStrings`: the earliest stop string, also one that spans tokens, cuts the text before it;
  text that may still turn out to be the start of a stop string is not streamed yet;
* stop token ids and end-of-sequence (`stops_on`), the token budget ("length");
* the confidence probe's trigger (`armed`: the text ends with the probe's prefix, so the next
  token's distribution is the one to read) and its reading;
* the events (TokenEvent, ConfidenceEvent, one FinishedEvent) and the Result.

It does not parse: the Result carries text; the cascade's `check_contract` makes it an answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence as Seq

from ..tokenization import ChatTemplateError, encode_chat
from .executor import (
    ConfidenceEvent,
    ConfidenceReading,
    FinishedEvent,
    InvalidRequestError,
    Request,
    RequestStream,
    Result,
    TokenEvent,
    TokenLogprobs,
)
from .probe import ConfidenceProbe

INCOMPLETE = "\ufffd"  # what a byte-level tokenizer decodes half a UTF-8 character to


def encode_prompt(tokenizer, request: Request) -> list[int]:
    """A request's prompt token ids: its input_ids, its messages through the chat template (message
    text stays text, tokenization.encode_chat) or its raw prompt. InvalidRequestError when the
    template rewrites a message."""
    if request.input_ids is not None:
        return list(request.input_ids)
    if request.messages is not None:
        try:
            return encode_chat(tokenizer, request.messages)
        except ChatTemplateError as err:
            raise InvalidRequestError(str(err)) from None
    return tokenizer.encode(request.prompt, add_special_tokens=False)


class Detokenizer:
    """Text of a growing list of token ids, a delta per token, equal to decoding the whole list.

    Each step decodes ids[prefix:read] and ids[prefix:], a window of a few tokens, and emits what
    the second adds to the first, so tokenizers whose pieces depend on their neighbours (byte-level
    BPE, SentencePiece's leading spaces) come out as a full decode would; a window that ends in
    half a character waits for the next token."""

    def __init__(self, tokenizer, *, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0  # the window's context starts here ...
        self._read = 0  # ... and its text has been emitted up to here
        # A fast tokenizer's decode is its Rust backend's plus an optional clean-up of spaces; without
        # the clean-up the backend gives the same text for ~0.7 us a call instead of ~4.4 (two calls a token).
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._backend_decode = backend.decode if backend is not None and \
            getattr(tokenizer, "clean_up_tokenization_spaces", None) is False else None

    def _decode(self, ids: list[int]) -> str:
        if self._backend_decode is not None:
            return self._backend_decode(ids, skip_special_tokens=self.skip_special_tokens)
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add(self, token: int) -> str:
        """Append a token; the new text ("" while a character is incomplete)."""
        self.ids.append(token)
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        if len(after) <= len(before) or after.endswith(INCOMPLETE):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return after[len(before):]


class StopStrings:
    """The stop strings of one request: where the earliest match starts, and how much of a text's
    end must wait because a stop string may begin there."""

    def __init__(self, stops: Iterable[str]):
        self.stops = tuple(s for s in stops if s)
        self.longest = max((len(s) for s in self.stops), default=0)

    def find(self, text: str, old_len: int) -> tuple[int, str] | None:
        """(where the earliest stop string starts, that string) among matches that end after old_len
        (what earlier text could not complete); None when none occurs."""
        hits = []
        for stop in self.stops:
            at = text.find(stop, max(0, old_len - len(stop) + 1))
            if at >= 0:
                hits.append((at, stop))
        return min(hits) if hits else None

    def held_back(self, text: str) -> int:
        """The length of the longest end of `text` that is a proper prefix of a stop string."""
        for k in range(min(self.longest - 1, len(text)), 0, -1):
            tail = text[-k:]
            if any(stop.startswith(tail) for stop in self.stops):
                return k
        return 0


class Sequence:
    """The output of one request: tokens in, events out (see the module docstring).

    An executor calls `stops_on(token)` first (a stop token or end-of-sequence ends the request
    with finish_reason "stop", the token not part of the output: `finish`), else `step(token, ...)`.
    `finish(reason)` ends it from outside (abort, error, the engine's own finish) and pushes the
    one FinishedEvent; `finish_reason` is None while it runs. Subclasses add an executor's fields.
    """

    def __init__(self, request: Request, prompt_ids: list[int], tokenizer, *, probe: ConfidenceProbe | None = None,
                 eos_token_ids: Iterable[int] = ()):
        self.request = request
        self.stream = RequestStream(request.request_id)
        self.prompt_ids = prompt_ids
        self.probe = probe
        self.started = time.perf_counter()
        self.detokenizer = Detokenizer(tokenizer)
        self.stop_strings = StopStrings(request.sampling.stop)
        self._stop_ids = frozenset(request.sampling.stop_token_ids) | frozenset(eos_token_ids)
        self.max_new_tokens = request.max_new_tokens
        self.generated: list[int] = []
        self.text = ""  # every complete character decoded, cut before a stop string
        self.streamed = 0  # characters of `text` sent in TokenEvents
        self.armed = False  # the next token is the confidence symbol: read its distribution
        self.confidence: ConfidenceReading | None = None
        self.confidence_at: float | None = None
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.matched_stop: int | str | None = None
        self.result: Result | None = None

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def finished(self) -> bool:
        return self.result is not None

    def stops_on(self, token: int) -> bool:
        return token in self._stop_ids

    def step(self, token: int, *, record: Seq[float] | None = None, logprobs: TokenLogprobs | None = None,
             terminated: bool = False) -> None:
        """Take one output token. record: the probe's reading of this token's distribution (given when
        `armed` was set before it); terminated: the grammar admits nothing more. Pushes the TokenEvent,
        the ConfidenceEvent with a record, and finishes on a stop string, the probe's stop, the
        grammar's end or the budget."""
        self.generated.append(token)
        old_len = len(self.text)
        self.text += self.detokenizer.add(token)
        reason = None
        cut = self.stop_strings.find(self.text, old_len) if self.stop_strings.stops else None
        if cut is not None:
            self.text, self.matched_stop, reason = self.text[:cut[0]], cut[1], "stop"
        reading = None
        if self.armed and reason is None:
            self.armed = False
            reading = self._read(token, record)
            if reading is not None and self.probe.stop_after:
                reason = "confidence"
        elif (self.probe is not None and self.confidence is None and reason is None
              and self.text.endswith(self.probe.prefix)):
            self.armed = True
        if reason is None and terminated:
            reason = "stop"
        if reason is None and len(self.generated) >= self.max_new_tokens:
            reason = "length"
        if reason is None and self.error is not None:
            reason = "error"
        # A finishing sequence streams all its text; a running one keeps back a possible stop's start.
        end = len(self.text) if reason is not None else len(self.text) - self.stop_strings.held_back(self.text)
        delta, self.streamed = self.text[self.streamed:end], max(self.streamed, end)
        self.stream.push(TokenEvent(self.request_id, token, delta, logprobs))
        if reading is not None:
            self.confidence, self.confidence_at = reading, time.perf_counter()
            self.stream.push(ConfidenceEvent(self.request_id, reading))
        if reason is not None:
            if reason == "confidence":
                self.text += self.probe.suffix  # forced by the grammar: nothing left to choose
            self.finish(reason, self.error)

    def _read(self, token: int, record) -> ConfidenceReading | None:
        """The reading at the confidence position; a token off the scale (no grammar applied) or a
        missing record is an error of the request."""
        text = self.detokenizer.tokenizer.decode([token])
        sampled = self.probe.value_of(token, text)
        if sampled is None:
            self.error = f"{text!r} was written at the confidence position, which is not on the scale"
            return None
        if record is None:
            self.error = f"no confidence reading at position {len(self.generated) - 1}"
            return None
        return ConfidenceProbe.reading(record, sampled, len(self.generated) - 1)

    def finish(self, reason: str, error: str | None = None, *, matched_stop: int | str | None = None,
               usage: tuple[int, int] | None = None) -> Result:
        """End the request (once; later calls return the first Result) and push its FinishedEvent,
        after a TokenEvent without a token for text not streamed yet, so the streamed text always
        joins to Result.text. usage: (prompt tokens, completion tokens) as an engine counted them, else ours."""
        if self.result is not None:
            return self.result
        self.finish_reason = self.finish_reason or reason
        self.error = self.error or error
        if matched_stop is not None:
            self.matched_stop = matched_stop
        prompt_tokens, completion_tokens = usage or (len(self.prompt_ids), len(self.generated))
        self.result = Result(
            request_id=self.request_id,
            text=self.text,
            finish_reason=self.finish_reason,
            prompt_tokens=prompt_tokens or len(self.prompt_ids),
            completion_tokens=completion_tokens,
            confidence=self.confidence,
            error=self.error,
            latency_s=time.perf_counter() - self.started,
            time_to_confidence_s=None if self.confidence_at is None else self.confidence_at - self.started,
            token_ids=list(self.generated),
            matched_stop=self.matched_stop,
        )
        if self.streamed < len(self.text):  # held back as a possible stop's start, or the probe's suffix
            self.stream.push(TokenEvent(self.request_id, None, self.text[self.streamed:]))
            self.streamed = len(self.text)
        self.stream.push(FinishedEvent(self.request_id, self.result))
        return self.result
