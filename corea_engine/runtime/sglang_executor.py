"""The GPU runtime: our Executor interface over SGLang's offline Engine (sglang 0.5.x).

SGLang does the batching, paging and grammar masking (its xgrammar backend, fed fmt.ebnf()).
We send token ids (our chat template, as the torch executor encodes them), ask for the
log-probabilities of the confidence scale tokens at every output position, and turn SGLang's
streamed chunks into TokenEvent / ConfidenceEvent / FinishedEvent with the torch executor's
semantics:

* answer-first contracts carry a ``stop_regex`` that ends generation on the step the confidence
  symbol is written; the result's finish_reason is then "confidence" and the forced closing text
  is appended, as the torch executor does;
* confidence-first contracts emit the ConfidenceEvent as soon as the symbol streams and go on;
* the confidence reading is computed by corea_kernels.confidence_stats from SGLang's
  log-probabilities (see sglang_protocol.py), or, with ``confidence_source="device"``, taken
  from the records of the ConfidenceRecorder logit processor that runs the kernel on the device
  logits inside SGLang's sampler (sglang_plugin.py).

Engine calls run on one asyncio loop in a thread of ours; SGLang's tokenizer manager binds its
receive loop to the loop of the first request. Request ids sent to SGLang all have the same
length, so none is a prefix of another (SGLang's scheduler aborts by rid prefix).

Needs a CUDA machine with sglang and sgl-kernel installed; CI runs none of this (see
tests/test_sglang_*.py for what is checked on CPU against SGLang's own classes).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import uuid

from .executor import Executor, ExecutorError, InvalidRequestError, Request, RequestStream, Result
from .probe import resolve
from .sequence import Sequence, encode_prompt
from .sglang_protocol import DEVICE_CONFIDENCE_KEY, build_sampling_params, finish_reason_of

log = logging.getLogger(__name__)

CONFIDENCE_SOURCES = ("logprobs", "device")
_rid_counter = itertools.count()


def sglang_rid() -> str:
    """A fixed-length request id: equal lengths make the set prefix-free."""
    return f"corea-{next(_rid_counter) % 10**12:012d}-{uuid.uuid4().hex}"


class _Seq(Sequence):
    """One request's output (the shared Sequence) and its SGLang request id."""

    def __init__(self, request: Request, prompt_ids: list[int], tokenizer, *, probe, rid: str):
        super().__init__(request, prompt_ids, tokenizer, probe=probe)
        self.rid = rid
        self.abort_requested = False


class ChunkDecoder:
    """Turns SGLang's streamed chunks of one engine into our events and results.

    Each chunk (non-incremental streaming, SGLang's default) carries the cumulative output_ids
    and meta_info: finish_reason, prompt_tokens, output_token_ids_logprobs (one list of
    (logprob, token_id, text) per output position) and, with the device processor, the
    DEVICE_CONFIDENCE_KEY records. New tokens go to the request's Sequence (sequence.py), with
    the probe's record at the confidence position. Kept apart from the engine so tests can feed
    it recorded SGLang-shaped chunks.
    """

    def __init__(self, tokenizer, confidence_source: str = "logprobs"):
        if confidence_source not in CONFIDENCE_SOURCES:
            raise ValueError(f"confidence_source must be one of {CONFIDENCE_SOURCES}, got {confidence_source!r}")
        self.tokenizer = tokenizer
        self.confidence_source = confidence_source

    def encode(self, request: Request) -> list[int]:
        """Prompt token ids, exactly as the torch executor encodes them."""
        return encode_prompt(self.tokenizer, request)

    def new_sequence(self, request: Request) -> _Seq:
        # resolve refuses a scale that is not single tokens, before queueing
        _, probe = resolve(request, self.tokenizer)
        return _Seq(request, self.encode(request), self.tokenizer, probe=probe, rid=sglang_rid())

    def generate_kwargs(self, seq: _Seq) -> dict:
        """The keyword arguments of Engine.async_generate for one sequence."""
        probe = seq.probe
        device = probe is not None and self.confidence_source == "device"
        kwargs = {
            "input_ids": seq.prompt_ids,
            "sampling_params": build_sampling_params(seq.request,
                                                     device_confidence_ids=list(probe.token_ids) if device else None),
            "stream": True,
            "rid": seq.rid,
        }
        if probe is not None:
            kwargs.update(return_logprob=True, token_ids_logprob=list(probe.token_ids))
            if device:
                from .sglang_plugin import ConfidenceRecorder

                kwargs["custom_logit_processor"] = ConfidenceRecorder.to_str()
        return kwargs

    def on_chunk(self, seq: _Seq, chunk: dict) -> tuple[str | None, str | None]:
        """Apply one chunk, pushing TokenEvents and the ConfidenceEvent; return (finish, error):
        ours when the Sequence finished first (the confidence was read, a stop string), else SGLang's."""
        meta = chunk["meta_info"]
        reason, error = finish_reason_of(meta)
        output_ids = list(chunk.get("output_ids") or [])
        stop_token = (meta.get("finish_reason") or {}).get("matched")
        if isinstance(stop_token, int) and output_ids and output_ids[-1] == stop_token:
            output_ids = output_ids[:-1]  # an end-of-sequence token is not part of the answer
        for position in range(len(seq.generated), len(output_ids)):
            record = self._record(seq, position, meta) if seq.armed else None
            seq.step(output_ids[position], record=record)
            if seq.finish_reason is not None:
                return seq.finish_reason, seq.error
        if reason is not None and seq.abort_requested:
            return "abort", None
        return reason, error

    def _record(self, seq: _Seq, position: int, meta: dict) -> list[float]:
        """The probe's record at the confidence position, from the device processor or the logprobs."""
        if self.confidence_source == "device":
            records = meta.get(DEVICE_CONFIDENCE_KEY) or []
            if position >= len(records) or records[position] is None:
                raise ExecutorError(f"no device confidence record at position {position} (have {len(records)})")
            return records[position]
        per_position = meta.get("output_token_ids_logprobs") or []
        if position >= len(per_position) or per_position[position] is None:
            raise ExecutorError(f"no scale log-probabilities at position {position} (have {len(per_position)})")
        return seq.probe.record_from_logprobs({int(t): float(lp) for lp, t, *_ in per_position[position]})

    def result(self, seq: _Seq, reason: str, error: str | None) -> Result:
        """Finish the sequence (its FinishedEvent is pushed once) and return its Result."""
        return seq.finish(reason, error)


class SglangExecutor(Executor):
    """Executor over sglang.Engine.

    model: a local model folder (config + tokenizer + weights; with load_format="dummy" the
    weights are random and only the config is read). engine_options go to sglang.Engine as they
    are: tp_size, dp_size, mem_fraction_static, max_running_requests, load_format, dtype,
    context_length, ... confidence_source: "logprobs" (default) or "device" (starts the engine
    with enable_custom_logit_processor and reads the in-sampler kernel's records).
    engine/tokenizer: an already started Engine and its tokenizer.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        confidence_source: str = "logprobs",
        max_prompt_chars: int = 16000,
        engine=None,
        tokenizer=None,
        **engine_options,
    ):
        if tokenizer is None:
            from transformers import AutoTokenizer

            if model is None:
                raise ValueError("give a model folder (or an engine and its tokenizer)")
            tokenizer = AutoTokenizer.from_pretrained(engine_options.get("tokenizer_path") or model)
        self.decoder = ChunkDecoder(tokenizer, confidence_source)
        self.tokenizer = tokenizer
        self.confidence_source = confidence_source
        self.max_prompt_chars = max_prompt_chars
        self.model_name = os.path.basename(str(model).rstrip("/")) if model else "sglang"
        self._seqs: dict[str, _Seq] = {}  # our request id -> running sequence
        self._lock = threading.Lock()
        self._closed = False
        self.engine = engine if engine is not None else self._start_engine(model, engine_options)
        if getattr(self.engine.tokenizer_manager, "incremental_streaming_output", False):
            raise ExecutorError("the executor reads cumulative chunks: start SGLang without incremental_streaming_output")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="corea-sglang-loop", daemon=True)
        self._thread.start()

    def _start_engine(self, model, options: dict):
        # Log-probabilities of the untempered, grammar-masked distribution for sampled requests
        # too (greedy ones get that anyway): what the torch executor's confidence reads. SGLang
        # reads this at import in its scheduler processes, which inherit our environment.
        os.environ.setdefault("SGLANG_RETURN_ORIGINAL_LOGPROB", "1")
        try:
            from sglang.srt.entrypoints.engine import Engine
        except ImportError as err:
            raise ExecutorError(
                f"SGLang's engine cannot be imported here ({err}); the sglang backend needs a CUDA "
                "machine with sglang installed: pip install 'corea_engine[sglang]'"
            ) from err

        options = dict(options)
        options.setdefault("grammar_backend", "xgrammar")
        if self.confidence_source == "device":
            options["enable_custom_logit_processor"] = True
        return Engine(model_path=model, **options)

    # ------------------------------------------------------------------ public interface
    def submit(self, request: Request) -> RequestStream:
        request.validate(self.max_prompt_chars)
        if request.wants_logprobs:
            # SGLang serves these itself: run it with --grpc-mode and reach it as a remote tier.
            raise InvalidRequestError("token_ids_logprob / return_logprob are not served by the in-process sglang "
                                      "executor; serve SGLang with --grpc-mode for them")
        request.check_token_ids(len(self.tokenizer))
        seq = self.decoder.new_sequence(request)
        with self._lock:
            if self._closed:
                raise ExecutorError("executor is closed")
            if request.request_id in self._seqs:
                raise InvalidRequestError(f"request id {request.request_id!r} is already running")
            self._seqs[request.request_id] = seq
        asyncio.run_coroutine_threadsafe(self._serve(seq), self._loop)
        return seq.stream

    def abort(self, request_id: str) -> bool:
        with self._lock:
            seq = self._seqs.get(request_id)
            if seq is None or seq.finished:
                return False
            seq.abort_requested = True
        self._loop.call_soon_threadsafe(self.engine.tokenizer_manager.abort_request, seq.rid)
        return True

    def load(self) -> tuple[int, int]:
        with self._lock:
            return sum(not seq.finished for seq in self._seqs.values()), 0  # SGLang queues internally

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            running = list(self._seqs)
        for request_id in running:
            self.abort(request_id)
        try:
            self.engine.shutdown()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            with self._lock:
                leftovers = list(self._seqs.values())
            for seq in leftovers:  # streams the stopped loop did not get to finish
                self._finish(seq, "abort", None)

    # ------------------------------------------------------------------ serving (event loop)
    async def _serve(self, seq: _Seq) -> None:
        reason, error = None, None
        try:
            chunks = await self.engine.async_generate(**self.decoder.generate_kwargs(seq))
            async for chunk in chunks:
                reason, error = self.decoder.on_chunk(seq, chunk)
                if reason is not None:
                    if chunk["meta_info"].get("finish_reason") is None:
                        # We finished first (the confidence was read): stop SGLang's side too.
                        self.engine.tokenizer_manager.abort_request(seq.rid)
                    break
            if reason is None:
                reason, error = "error", "SGLang's stream ended without a finish reason"
        except Exception as err:  # one failed request must not take the loop down
            log.exception("SGLang request %s failed", seq.rid)
            reason, error = "error", f"{type(err).__name__}: {err}"
        self._finish(seq, reason, error)

    def _finish(self, seq: _Seq, reason: str, error: str | None) -> None:
        with self._lock:
            self._seqs.pop(seq.request.request_id, None)
        self.decoder.result(seq, reason, error)
