"""What the overhead benchmarks (grpc_, http_, remote_, smg_overhead.py) share: timing loops,
percentiles, a free port, the figures' file, their common options, and two no-model Executors.

Scripts import it by putting this folder on sys.path (they run as `python benchmarks/<name>.py`).
Times are milliseconds (float) throughout.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from pathlib import Path

from corea_engine.runtime.executor import (
    ConfidenceEvent, ConfidenceReading, Executor, FinishedEvent, Request, RequestStream, Result, TokenEvent,
    TokenLogprobs,
)
from corea_engine.runtime.probe import resolve
from corea_engine.runtime.sequence import Sequence, encode_prompt


def percentile(values, q: float) -> float:
    """The q-th quantile (q in [0, 1]) of a non-empty sequence: the nearest-rank element, no interpolation."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at the moment of asking."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(call, count: int) -> list[float]:
    """Calls `call()` `count` times in a row; returns each call's wall time in ms."""
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    return times


async def timed_async(call, count: int) -> list[float]:
    """`timed` for a coroutine function: awaits `call()` `count` times in a row; ms per call."""
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        await call()
        times.append((time.perf_counter() - t0) * 1000)
    return times


def load_average() -> float:
    """The 1-minute load average (nan where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def write_figures(path: str | None, figures: dict) -> None:
    """Writes `figures` as indented JSON to `path` (the --json option); nothing when path is None."""
    if path:
        Path(path).write_text(json.dumps(figures, indent=2) + "\n")


def block_parser(description: str, *, warmup: int, real_help: str) -> argparse.ArgumentParser:
    """The options of the benchmarks that time each path in alternating blocks, one block a path per round."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=200, help="measured requests per path and round")
    ap.add_argument("--rounds", type=int, default=5, help="rounds; each round runs a block of every path")
    ap.add_argument("--warmup", type=int, default=warmup)
    ap.add_argument("--real", action="store_true", help=real_help)
    ap.add_argument("--max-new-tokens", type=int, default=4)
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    return ap


class _Instant(Executor):
    """No model: every request is answered within submit, so nothing is ever running or waiting."""

    model_name = "instant"

    def abort(self, request_id: str) -> bool:
        return False

    def load(self) -> tuple[int, int]:
        return 0, 0


class InstantExecutor(_Instant):
    """The stand-in SLM behind a Cascade: answers every request at once with the same contract-shaped
    text (tokens as ~4-character text pieces, a confidence reading, the Result)."""

    def submit(self, request: Request) -> RequestStream:
        request.validate(16000)
        fmt = request.format
        text = fmt.render("3 + 5 = 8.", "8", 0.8)
        stream = RequestStream(request.request_id)
        pieces = [text[i:i + 4] for i in range(0, len(text), 4)]  # ~token-sized chunks
        reading = ConfidenceReading(0.8, 0.78, tuple([0.0] * 7 + [0.2, 0.7, 0.1]), 0.99, 0.8, len(pieces) - 1)
        events = [TokenEvent(request.request_id, i, piece) for i, piece in enumerate(pieces)]
        events.append(ConfidenceEvent(request.request_id, reading))
        events.append(FinishedEvent(request.request_id, Result(
            request.request_id, text, "confidence", prompt_tokens=150, completion_tokens=len(pieces),
            confidence=reading)))
        # Already on the consumer's loop: enqueue directly. push() would wake the loop through
        # its self-pipe once per event, which only a producer on another thread needs.
        for event in events:
            stream._queue.put_nowait(event)
        stream.result = events[-1].result
        return stream


class InstantTokenExecutor(_Instant):
    """The stand-in model behind a worker (or a RemoteExecutor's peer): streams the token ids of a
    fixed `answer` at once, at most max_new_tokens of them, with the logprobs a request asks for,
    through the executors' shared Sequence: a contract request stops at its confidence value
    ("confidence"), as a model's executor does (its scale read from flat log-probabilities).

    ends_on_eos: finish "stop" with EOS as matched_stop (not streamed) when the answer ends before
    the budget and the confidence; otherwise, and by default, such a request ends "length".
    prompt_tokens counts the request's input_ids, or its messages through the chat template, as a
    model's executor would.
    """

    def __init__(self, tokenizer, answer: str, model_name: str = "instant", ends_on_eos: bool = False):
        self.tokenizer, self.model_name, self.ends_on_eos = tokenizer, model_name, ends_on_eos
        self.vocab_size = len(tokenizer)
        self.answer_ids = tokenizer.encode(answer, add_special_tokens=False)

    def submit(self, request: Request) -> RequestStream:
        request.validate(16000)
        request.check_token_ids(self.vocab_size)
        _, probe = resolve(request, self.tokenizer)
        seq = Sequence(request, encode_prompt(self.tokenizer, request), self.tokenizer, probe=probe)
        logprobs = TokenLogprobs(-0.1, (), tuple(-2.3 for _ in request.logprob_token_ids)) if request.wants_logprobs else None
        for token in self.answer_ids:
            record = probe.record_from_logprobs({t: -2.3 for t in probe.token_ids}) if seq.armed else None
            seq.step(token, record=record, logprobs=logprobs)
            if seq.finished:
                return seq.stream
        if self.ends_on_eos:
            seq.finish("stop", matched_stop=self.tokenizer.eos_token_id)
        else:
            seq.finish("length")
        return seq.stream
