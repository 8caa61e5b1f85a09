"""The embedded runtime: continuous batching over a transformers causal LM, on CPU or CUDA.

One engine thread owns the model. Between decode steps it admits waiting requests (a batched
prefill through the transformers model whose KV is copied into each row's slot of a SlotKVCache)
and retires finished or aborted rows (their slots are reused; the batch is never copied). Each
decode step runs our own forward over the slots (llama_forward.py), then:

  logits [B, V] -> grammar bitmask per row (xgrammar) -> the confidence probe read on armed rows
  (probe.read_logits: corea_kernels.confidence_stats on the raw logits + bitmask) -> mask -> sample
  -> each row's Sequence (sequence.py: text, stops, the probe's trigger, events, the Result).

The executor knows grammars and probes, not answers (probe.resolve turns a contract into both).
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

import torch
import xgrammar as xgr

from ..contract import GrammarCache
from ..models import load_model
from ..tokenization import ChatTemplateError, encode_chat
from .dtypes import check_device, check_quantization, resolve_dtype
from .executor import (
    MAX_NEW_TOKENS_LIMIT,
    Executor,
    ExecutorError,
    InvalidRequestError,
    Request,
    RequestStream,
    TokenLogprobs,
)
from .llama_forward import LlamaDecodeStep
from .probe import read_logits, resolve
from .sequence import Sequence, encode_prompt

log = logging.getLogger(__name__)
PREFIX_CACHE_SIZE = 16
# A shared prefix shorter than this is not worth its forward pass and its cache entry (a template's
# "<|im_start|>system\n" before a last system message is 3 tokens; SmolLM2's default system prompt 24).
SHARED_PREFIX_MIN_TOKENS = 16
# Prompts are prefilled this many tokens at a time; between chunks aborts are applied, so a
# cancel or deadline that lands during a long prefill stops it within one chunk.
PREFILL_CHUNK_TOKENS = 128
# A prefill forward pass costs about this many prompt tokens' worth on top of its tokens (SmolLM2,
# one CPU thread: 8 x 90 tokens take 503 ms, 1 x 90 take 81 ms). Joiners are grouped by prompt
# length against it: every row of a group is padded to the group's longest prompt.
PREFILL_PASS_COST_TOKENS = 32


@dataclass
class StepStats:
    """Where the engine's time goes; read by benchmarks (cumulative seconds and counts)."""

    decode_steps: int = 0
    prefills: int = 0  # prefill passes merged into the batch: one per shared prefix and length bucket
    prefill_tokens: int = 0  # prompt tokens run through the model (a cached prefix is not)
    prefill_padding: int = 0  # padding positions run beside them (rows shorter than their group's longest)
    prefill_s: float = 0.0  # whole prefills: cached-prefix lookups, prompt forward passes, first tokens
    prefix_hits: int = 0  # admissions of a shared prefix's joiners that found its KV cached
    prefill_chunks: int = 0  # forward passes over prompt tokens (a long prompt takes several)
    tokens: int = 0
    forward_s: float = 0.0
    grammar_s: float = 0.0  # fill + apply the bitmask, accept tokens
    sequence_s: float = 0.0  # each row's Sequence.step: text, the probe's trigger, stops, events
    confidence_s: float = 0.0
    sample_s: float = 0.0
    step_s: float = 0.0  # whole decode steps, forward included

    def reset(self) -> None:
        self.__init__()


class _Sequence(Sequence):
    """A row of the batch: the shared output side plus what this engine keeps per request."""

    def __init__(self, request: Request, prompt_ids: list[int], tokenizer, *, prefix_len: int, probe, matcher,
                 generator: torch.Generator | None, eos_token_ids):
        super().__init__(request, prompt_ids, tokenizer, probe=probe, eos_token_ids=eos_token_ids)
        self.prefix_len = prefix_len  # leading prompt tokens shared with other requests (cached KV)
        self.matcher = matcher
        self.generator = generator


class TorchExecutor(Executor):
    """Continuous-batching executor over a Hugging Face causal LM.

    model: a spec for corea_engine.models.resolve_model (default: the embedded SmolLM2), or
    pass an already loaded `model_and_tokenizer` pair. dtype: "float32" (the reference
    numerics: a request reads the same alone or batched), "auto" (bfloat16 where the device
    computes it natively, else float32; see dtypes.py), "bfloat16" or "float16"; the one chosen
    is `self.dtype`. quantization: "none", "int8wo" or "int4wo" (weight-only int8/int4 decode
    step; bfloat16 on CPU only, see dtypes.check_quantization), `self.quantization`; quantized up to
    llama_forward.MAX_ROWS rows a step, the bf16 copy above (`self.runtime` says so, and names an
    attention kernel other than SDPA: 'cpu, bfloat16, int4wo (<= 8 rows), corea-cpu attention'). threads: torch intra-op
    threads for CPU (set deliberately: oversubscribing two cores costs up to 10x). prefix_cache:
    compute the prompt's shared part before its question once and reuse its KV (a contract's
    system prompt, the template's default one; False prefills every prompt whole). Raises ExecutorError for a model architecture the decode step does not run
    (llama_forward.py) or a quantization it cannot run with this dtype and device.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        max_batch_size: int = 16,
        max_prompt_chars: int = 16000,
        max_prompt_tokens: int = 2048,
        threads: int | None = None,
        model_and_tokenizer: tuple | None = None,
        prefix_cache: bool = True,
        quantization: str = "none",
    ):
        if threads is not None:
            torch.set_num_threads(threads)
        if model_and_tokenizer is not None:
            self.model, self.tokenizer = model_and_tokenizer
            self.model_name = getattr(self.model.config, "_name_or_path", "model") or "model"
            self.model_path = None
        else:
            try:
                check_device(device)  # a clear error before any weights load
                check_quantization(quantization, resolve_dtype(dtype, device), device)
            except ValueError as err:
                raise ExecutorError(str(err)) from None
            dtype = resolve_dtype(dtype, device)
            self.model, self.tokenizer, source = load_model(model, device=device, dtype=dtype)
            self.model_name, self.model_path = source.name, source.path  # the folder: tokenizer files
        self.device = next(self.model.parameters()).device
        self.dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        self.quantization = quantization
        self.max_batch_size = max_batch_size
        self.prefix_cache = prefix_cache
        self.max_prompt_chars = max_prompt_chars
        # Characters do not bound tokens (one astral-plane digit is three tokens); a prefill of
        # thousands of tokens stalls the whole batch on CPU, so the token count is capped too.
        self.max_prompt_tokens = max_prompt_tokens
        self.max_positions = getattr(self.model.config, "max_position_embeddings", 1 << 30)
        self.vocab_size = self.model.get_output_embeddings().weight.shape[0]
        try:
            self._step = LlamaDecodeStep(self.model, self.quantization, max_rows=max_batch_size)
        except ValueError as err:  # UnsupportedModelError, or a quantization this model cannot run
            raise ExecutorError(str(err)) from None
        attention = self._step.attention  # named where it is not the default, SDPA
        self.runtime = ", ".join(filter(None, (str(self.device), self.dtype, self._step.weights,
                                               f"{attention} attention" if attention != "sdpa" else "")))
        log.info("torch executor: %s on %s, %d threads", self.model_name, self.runtime, torch.get_num_threads())
        # No request needs more columns than its longest prompt plus the largest budget.
        self._kv = self._step.new_cache(max_batch_size, min(self.max_positions, self.max_prompt_tokens + MAX_NEW_TOKENS_LIMIT))
        self.grammars = GrammarCache.for_tokenizer(self.tokenizer, self.vocab_size)
        self._eos = self._eos_ids()
        self._pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self._eos)
        self.stats = StepStats()
        # transformers 5.x renamed past_key_values to cache; accept both generations.
        forward_params = inspect.signature(self.model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in forward_params else "past_key_values"

        self._lock = threading.Condition()
        self._waiting: deque[_Sequence] = deque()
        self._joining: list[_Sequence] = []  # taken from the queue, being prefilled
        self._aborted: set[str] = set()
        self.aborts = 0  # abort() calls that found their request (what a cancelled caller leaves behind)
        self._closed = False
        # Batch state, owned by the engine thread.
        self._rows: list[_Sequence] = []  # row i lives in slot i of self._kv
        self._next: list[int] = []  # last sampled token of each row, not yet fed
        self._bitmask = _Bitmask(max_batch_size, self.vocab_size, self.device)
        # Every constrained row's mask in one call into xgrammar's C++ (no Python per row), on
        # the torch thread budget: more would oversubscribe the cores the forward runs on.
        self._grammar = xgr.BatchGrammarMatcher(max_threads=torch.get_num_threads())
        self._prefixes: OrderedDict[tuple[int, ...], list] = OrderedDict()
        self._thread = threading.Thread(target=self._engine_loop, name="corea-torch-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public interface
    def submit(self, request: Request) -> RequestStream:
        request.validate(self.max_prompt_chars)
        request.check_token_ids(self.vocab_size)
        prompt_ids = self._encode(request)
        if len(prompt_ids) > self.max_prompt_tokens:
            raise InvalidRequestError(
                f"the prompt is {len(prompt_ids)} tokens; the limit is {self.max_prompt_tokens}"
            )
        budget = len(prompt_ids) + request.max_new_tokens
        if budget > self.max_positions:
            raise InvalidRequestError(
                f"prompt ({len(prompt_ids)} tokens) plus max_new_tokens "
                f"({request.max_new_tokens}) exceeds the model's {self.max_positions} positions"
            )
        grammar, probe = resolve(request, self.tokenizer)
        matcher = None
        if grammar is not None:
            try:
                matcher = self.grammars.grammar_matcher(grammar.kind, grammar.source)
            except ValueError as err:
                raise InvalidRequestError(str(err)) from None
        generator = None
        if request.sampling.temperature > 0:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(request.sampling.seed if request.sampling.seed is not None else torch.seed())
        seq = _Sequence(request, prompt_ids, self.tokenizer,
                        prefix_len=self._shared_prefix_len(request, prompt_ids) if self.prefix_cache else 0,
                        probe=probe, matcher=matcher, generator=generator, eos_token_ids=self._eos)
        with self._lock:
            if self._closed:
                raise ExecutorError("executor is closed")
            self._waiting.append(seq)
            self._lock.notify()
        return seq.stream

    def abort(self, request_id: str) -> bool:
        with self._lock:
            known = any(s.request_id == request_id and s.finish_reason is None
                        for s in (*self._waiting, *self._joining, *self._rows))
            if known:
                self._aborted.add(request_id)
                self.aborts += 1
                self._lock.notify()
            return known

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(timeout=60)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def running(self) -> int:
        return len(self._rows)

    def load(self) -> tuple[int, int]:
        with self._lock:
            return len(self._rows), len(self._waiting)

    @property
    def eos_token_ids(self) -> list[int]:
        return sorted(self._eos)

    @property
    def prefix_cache_entries(self) -> int:
        """Shared prompt prefixes whose KV is cached (at most PREFIX_CACHE_SIZE; keyed by system prompts)."""
        return len(self._prefixes)

    # ------------------------------------------------------------------ request preparation
    def _encode(self, request: Request) -> list[int]:
        return encode_prompt(self.tokenizer, request)

    def _shared_prefix_len(self, request: Request, prompt_ids: list[int]) -> int:
        """Length of the prompt's part before its last message's content: the chat template's
        own text (SmolLM2's default system prompt when there is none) and every earlier message.

        Requests of one contract share that part (its system prompt, the format instructions), and
        free-text requests share the template's default system prompt, so its KV is computed once.
        It is the longest common prefix of the prompt and the same messages with the last one's
        content empty, so it is always a true prefix of the prompt (0: nothing to share, or fewer
        than SHARED_PREFIX_MIN_TOKENS, e.g. a template's header alone before a last system message).
        """
        if not request.messages:
            return 0
        *earlier, last = request.messages
        try:
            head = encode_chat(self.tokenizer, [*earlier, {**last, "content": ""}])
        except ChatTemplateError:
            return 0
        n = 0
        for a, b in zip(head, prompt_ids):
            if a != b:
                break
            n += 1
        return n if SHARED_PREFIX_MIN_TOKENS <= n < len(prompt_ids) else 0

    def _eos_ids(self) -> set[int]:
        ids = set()
        for source in (self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(source)
        if not ids:
            raise ExecutorError("the tokenizer defines no end-of-sequence token")
        return ids

    # ------------------------------------------------------------------ engine thread
    def _engine_loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._lock:
                while not self._closed and not self._waiting and not self._rows:
                    self._lock.wait()
                if self._closed:
                    break
                room = self.max_batch_size - len(self._rows)
                joining = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
                self._joining = joining
                aborted, self._aborted = self._aborted, set()
            try:
                self._apply_aborts(aborted, joining)
                joining = [s for s in joining if s.finish_reason is None]
                if joining:
                    self._prefill(joining)
                with self._lock:
                    self._joining = []
                if self._rows:
                    self._decode_step()
            except Exception as err:  # a failed forward pass fails the batch, not the engine
                log.exception("engine step failed")
                for seq in self._rows + joining:
                    if seq.finish_reason is None:
                        seq.finish_reason, seq.error = "error", f"{type(err).__name__}: {err}"
                        self._finish(seq)
                self._reset_batch()
                with self._lock:
                    self._joining = []
        with self._lock:
            leftovers = list(self._waiting) + self._rows
            self._waiting.clear()
        for seq in leftovers:
            if seq.finish_reason is None:
                seq.finish_reason = "abort"
                self._finish(seq)
        self._reset_batch()

    def _apply_aborts(self, aborted: set[str], joining: list[_Sequence]) -> None:
        if not aborted:
            return
        with self._lock:
            waiting = [s for s in self._waiting if s.request_id in aborted]
            for seq in waiting:
                self._waiting.remove(seq)
        for seq in waiting + joining + self._rows:
            if seq.request_id in aborted and seq.finish_reason is None:
                seq.finish_reason = "abort"
                self._finish(seq)
        self._drop_finished()

    def _reset_batch(self) -> None:
        self._rows, self._next = [], []
        self._kv.clear()

    def _forward(self, input_ids, attention_mask, position_ids, kv):
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=kv) if kv is not None else DynamicCache()
        t0 = time.perf_counter()
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_kwarg: cache},
        )
        self.stats.forward_s += time.perf_counter() - t0
        new_kv = [(layer.keys, layer.values) for layer in cache.layers]
        return out.logits[:, -1, :].float(), new_kv

    def _prefill(self, joining: list[_Sequence]) -> None:
        """Run the prompts of joining requests and merge them into the batch, one forward pass
        per shared prefix (the contract's system prompt is computed once and cached)."""
        t0 = time.perf_counter()
        groups: dict[tuple[int, ...], list[_Sequence]] = {}
        for seq in joining:
            groups.setdefault(tuple(seq.prompt_ids[: seq.prefix_len]), []).append(seq)
        for prefix, seqs in groups.items():
            prefix_kv = self._prefix_kv(prefix) if prefix else None  # once for all its length buckets
            for bucket in length_buckets([len(s.prompt_ids) - len(prefix) for s in seqs], PREFILL_PASS_COST_TOKENS):
                self._prefill_group(prefix, prefix_kv, [seqs[i] for i in bucket])
        self.stats.prefill_s += time.perf_counter() - t0

    def _prefill_group(self, prefix: tuple[int, ...], prefix_kv, seqs: list[_Sequence]) -> None:
        # Row layout: [prefix | padding | prompt suffix]. Every row ends on the same column, so
        # later steps append one column for all; the padding is masked out and positions count
        # real tokens only, so each row computes exactly what it would alone. Columns go through
        # the model PREFILL_CHUNK_TOKENS at a time; rows aborted meanwhile leave between chunks.
        n, p = len(seqs), len(prefix)
        suffixes = [seq.prompt_ids[p:] for seq in seqs]
        width = max(len(x) for x in suffixes)
        ids = torch.full((n, width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, suffix in enumerate(suffixes):
            ids[i, width - len(suffix):] = torch.tensor(suffix)
            mask[i, width - len(suffix):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = p + (mask.cumsum(1) - 1).clamp(min=0)
        self.stats.prefill_tokens += sum(len(x) for x in suffixes)
        self.stats.prefill_padding += n * width - sum(len(x) for x in suffixes)
        kv = None
        if p:
            kv = [(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in prefix_kv]
            mask = torch.cat([torch.ones((n, p), dtype=torch.long, device=self.device), mask], 1)
        done = p  # mask columns already in the KV cache
        while True:
            end = min(done + PREFILL_CHUNK_TOKENS, mask.shape[1])
            logits, kv = self._forward(ids[:, done - p:end - p], mask[:, :end], positions[:, done - p:end - p], kv)
            self.stats.prefill_chunks += 1
            done = end
            keep = self._still_wanted(seqs)
            if not keep:
                return
            if len(keep) < len(seqs):
                index = torch.tensor(keep, device=self.device)
                seqs = [seqs[i] for i in keep]
                ids, mask, positions, logits = (t.index_select(0, index) for t in (ids, mask, positions, logits))
                kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in kv]
            if done == mask.shape[1]:
                break
        n = len(seqs)
        self.stats.prefills += 1
        self._merge(seqs, kv, mask)
        # The prompt's last logits give each joiner its first token.
        self._process(logits, first_row=len(self._rows) - n)

    def _still_wanted(self, seqs: list[_Sequence]) -> list[int]:
        """Indices of the prefilling rows not aborted meanwhile; the aborted ones finish now."""
        with self._lock:
            hit = self._aborted & {s.request_id for s in seqs}
            self._aborted -= hit
        for seq in seqs:
            if seq.request_id in hit:
                seq.finish_reason = "abort"
                self._finish(seq)
        return [i for i, s in enumerate(seqs) if s.request_id not in hit]

    def _prefix_kv(self, prefix: tuple[int, ...]):
        """KV of a shared prompt prefix, computed once (LRU of PREFIX_CACHE_SIZE entries)."""
        if prefix in self._prefixes:
            self._prefixes.move_to_end(prefix)
            self.stats.prefix_hits += 1
            return self._prefixes[prefix]
        self.stats.prefill_tokens += len(prefix)
        ids = torch.tensor([prefix], device=self.device)
        ones = torch.ones_like(ids)
        _, kv = self._forward(ids, ones, torch.arange(len(prefix), device=self.device).unsqueeze(0), None)
        self._prefixes[prefix] = kv
        if len(self._prefixes) > PREFIX_CACHE_SIZE:
            self._prefixes.popitem(last=False)
        return kv

    def _merge(self, joining, kv, mask) -> None:
        """Copy each joiner's prefilled KV (its real columns of `mask`) into a new slot."""
        for j, seq in enumerate(joining):
            self._kv.admit(kv, j, mask[j].nonzero().squeeze(1))
            self._rows.append(seq)
            self._next.append(0)

    def _decode_step(self) -> None:
        t0 = time.perf_counter()
        ids = torch.tensor(self._next, dtype=torch.long, device=self.device)
        logits = self._step(ids, self._kv)
        self.stats.forward_s += time.perf_counter() - t0
        self._process(logits, first_row=0)
        self.stats.decode_steps += 1
        self.stats.step_s += time.perf_counter() - t0

    def _process(self, logits: torch.Tensor, first_row: int) -> None:
        """Mask, read confidence, sample and advance rows first_row.. with `logits` [n, V]."""
        rows = self._rows[first_row:]
        t0 = time.perf_counter()
        constrained = [i for i, s in enumerate(rows) if s.matcher is not None]
        bitmask = None
        if constrained:
            self._grammar.batch_fill_next_token_bitmask([rows[i].matcher for i in constrained], self._bitmask.host,
                                                         indices=constrained)
            bitmask = self._bitmask.to_device(len(rows))
        t1 = time.perf_counter()
        # The probe reads armed rows from the raw logits, the mask applied inside the kernel.
        records = [None] * len(rows)
        if any(s.armed for s in rows):
            records = read_logits(logits, [s.probe.scale_key if s.armed else None for s in rows], bitmask)
        # Asked-for logprobs come from the raw logits too (a new tensor: the mask below is in place).
        wanting = [i for i, s in enumerate(rows) if s.request.wants_logprobs]
        logprobs = torch.log_softmax(logits[wanting], dim=-1) if wanting else None
        t2 = time.perf_counter()
        if constrained:
            xgr.apply_token_bitmask_inplace(
                logits, bitmask, indices=constrained if len(constrained) < len(rows) else None
            )
        t3 = time.perf_counter()
        tokens = self._sample(logits, rows)
        asked = _token_logprobs(rows, wanting, logprobs, tokens) if wanting else {}
        t4 = time.perf_counter()
        accepted = [self._accept(seq, token) for seq, token in zip(rows, tokens)]
        t5 = time.perf_counter()
        for i, (seq, token) in enumerate(zip(rows, tokens)):
            self._advance(seq, token, accepted[i], first_row + i, records[i], asked.get(i))
        self.stats.sequence_s += time.perf_counter() - t5
        self.stats.grammar_s += (t1 - t0) + (t3 - t2) + (t5 - t4)
        self.stats.confidence_s += t2 - t1
        self.stats.sample_s += t4 - t3
        self._drop_finished()

    def _sample(self, logits: torch.Tensor, rows: list[_Sequence]) -> list[int | None]:
        """One token per row; None for a row whose sampling failed (it is finished with the error).

        Each row samples alone, so one request's parameters can end only that request.
        """
        tokens = logits.argmax(dim=-1).tolist()
        for i, seq in enumerate(rows):
            sp = seq.request.sampling
            if sp.temperature <= 0:
                continue
            try:
                tokens[i] = self._sample_row(logits[i], sp, seq.generator)
            except (RuntimeError, ValueError) as err:
                tokens[i] = None
                seq.finish_reason, seq.error = "error", f"sampling failed: {err}"
                self._finish(seq)
        return tokens

    @staticmethod
    def _sample_row(logits: torch.Tensor, sp, generator) -> int:
        scaled = logits / sp.temperature
        if 0 < sp.top_k < scaled.numel():
            kth = scaled.topk(sp.top_k).values[-1]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        probs = torch.softmax(scaled, dim=-1)
        if sp.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            keep = sorted_probs.cumsum(0) - sorted_probs < sp.top_p
            keep[0] = True  # the top token always stays, whatever the rounding
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        # Checked here: on CUDA, multinomial over inf/NaN is a device assert that kills the process.
        total = probs.sum()
        if not (torch.isfinite(probs).all() and total > 0):
            raise ValueError(f"no finite distribution at temperature {sp.temperature!r}, top_p {sp.top_p!r}")
        return int(torch.multinomial(probs, 1, generator=generator))

    def _accept(self, seq: _Sequence, token: int | None) -> str:
        """The grammar's word on `token`: "stop", "rejected", "terminated" (accepted, and the
        grammar is complete) or "running"; "" for a row already finished (its sampling failed)."""
        if seq.finish_reason is not None or token is None:
            return ""
        matcher = seq.matcher
        # End-of-sequence only where the grammar allows it to end (a caller's stop token always).
        if seq.stops_on(token) and (token in seq.request.sampling.stop_token_ids or token not in self._eos
                                    or matcher is None or matcher.is_terminated() or matcher.accept_token(token)):
            return "stop"
        if matcher is None:
            return "running"
        if not matcher.accept_token(token):
            return "rejected"
        return "terminated" if matcher.is_terminated() else "running"

    def _advance(self, seq: _Sequence, token: int, accepted: str, row: int, record, logprobs=None) -> None:
        if not accepted:
            return
        self.stats.tokens += 1
        if accepted == "stop":
            seq.finish("stop", matched_stop=token)
        elif accepted == "rejected":
            seq.finish("error", f"grammar rejected token {token}")
        else:
            self._next[row] = token
            seq.step(token, record=record, logprobs=logprobs, terminated=accepted == "terminated")

    def _finish(self, seq: _Sequence) -> None:
        seq.finish(seq.finish_reason, seq.error)

    def _drop_finished(self) -> None:
        # Swap-remove, from the end: the last row moves into the freed slot, nothing else moves.
        for i in reversed(range(len(self._rows))):
            if self._rows[i].finish_reason is None:
                continue
            self._kv.retire(i)
            self._rows[i], self._next[i] = self._rows[-1], self._next[-1]
            self._rows.pop()
            self._next.pop()


def length_buckets(lengths: list[int], pass_cost: int) -> list[list[int]]:
    """Indices of `lengths` (prompt tokens to prefill) split into groups prefilled together, shortest
    first. A group computes rows x its longest prompt columns (the rest is padding) plus `pass_cost`
    for its forward pass; the split minimises the total (a dynamic programme over the sorted lengths:
    each group is a run of neighbours)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    ordered = [lengths[i] for i in order]
    best = [0] + [0] * len(ordered)  # best[j]: cost of the first j sorted lengths
    start = [0] * (len(ordered) + 1)  # where the last group of that best split starts
    for j in range(1, len(ordered) + 1):
        best[j], start[j] = min((best[i] + (j - i) * ordered[j - 1] + pass_cost, i) for i in range(j))
    buckets, j = [], len(ordered)
    while j:
        buckets.append(order[start[j]:j])
        j = start[j]
    return buckets[::-1]


class _Bitmask:
    """xgrammar's token bitmask [max_batch, ceil(vocab / 32)] int32, allocated once.

    Rows are filled on the host by the matchers; on CPU the same tensor is applied, on an
    accelerator the filled rows go over in one copy per step into a preallocated device twin."""

    def __init__(self, rows: int, vocab_size: int, device: torch.device):
        self.host = xgr.allocate_token_bitmask(rows, vocab_size)
        self.device = self.host
        if device.type != "cpu":
            self.host = self.host.pin_memory()
            self.device = torch.empty_like(self.host, device=device)

    def to_device(self, rows: int) -> torch.Tensor:
        """The first `rows` rows, on the device ([rows, words] int32)."""
        if self.device is self.host:
            return self.host[:rows]
        return self.device[:rows].copy_(self.host[:rows], non_blocking=True)


def _token_logprobs(rows: list[_Sequence], wanting: list[int], logprobs: torch.Tensor,
                    tokens: list[int | None]) -> dict[int, TokenLogprobs]:
    """Row index -> the logprobs its request asked for, from `logprobs` [len(wanting), V] (rows
    `wanting`); each kind (sampled, top-k, selected ids) is gathered for every row in one transfer.
    A row whose sampling failed (token None) gets none."""
    keep = [j for j, i in enumerate(wanting) if tokens[i] is not None]
    if not keep:
        return {}
    index = [wanting[j] for j in keep]
    logprobs = logprobs[keep] if len(keep) < len(wanting) else logprobs
    requests = [rows[i].request for i in index]
    device = logprobs.device
    sampled = logprobs.gather(1, torch.tensor([[tokens[i]] for i in index], device=device))[:, 0].tolist()
    k = max(r.top_logprobs_num or 0 for r in requests)
    top_values = top_ids = None
    if k:
        values, ids = logprobs.topk(k)
        top_values, top_ids = values.tolist(), ids.tolist()
    width = max(len(r.logprob_token_ids or ()) for r in requests)
    chosen = None
    if width:
        ids = [list(r.logprob_token_ids or ()) + [0] * (width - len(r.logprob_token_ids or ())) for r in requests]
        chosen = logprobs.gather(1, torch.tensor(ids, device=device)).tolist()
    out = {}
    for n, (i, request) in enumerate(zip(index, requests)):
        top = tuple(zip(top_ids[n][: request.top_logprobs_num], top_values[n][: request.top_logprobs_num])) \
            if request.top_logprobs_num else ()
        selected = tuple(chosen[n][: len(request.logprob_token_ids)]) if request.logprob_token_ids else ()
        out[i] = TokenLogprobs(sampled[n], top, selected)
    return out

