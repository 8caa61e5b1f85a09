"""Shared by tests/test_sglang_*.py: SGLang's CPU-importable parts and real SmolLM2 runs to check against.

SGLang's engine needs a GPU, so these tests exercise our side of every boundary against SGLang's
own classes on CPU, with real model outputs (the embedded SmolLM2 through the torch executor) as
the data: what a GPU engine would have produced for the same request, up to floating point.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import logging

import pytest
import torch

sglang = pytest.importorskip(
    "sglang", reason="sglang is not installed; run scripts/install_sglang_cpu.sh (about 3 minutes, no GPU needed; make test does)"
)

from corea_engine.contract import FORMATS, GrammarCache, build_messages  # noqa: E402
from corea_engine.runtime.executor import Request, SamplingParams  # noqa: E402

QUESTION = "A baker makes 12 rolls and sells 5. How many rolls are left?"
# Short free-text bounds keep each real run to a few dozen tokens on two shared cores.
FORMATS_UNDER_TEST = {name: fmt.bounded(max_reasoning_chars=60, max_answer_chars=12) for name, fmt in FORMATS.items()}


def apply_custom_logit_processor():
    """SGLang's sglang.srt.layers.sampler.apply_custom_logit_processor.

    That module's imports reach multimodal configs that import torchvision, and PyPI's
    torchvision wheels link CUDA torch (they fail to load next to the CPU torch here). When
    that is the only obstacle, the function is compiled from SGLang's installed sampler.py: the
    code that runs is SGLang's own, read from the file, not a copy of ours.
    """
    try:
        from sglang.srt.layers.sampler import apply_custom_logit_processor as function

        return function
    except ModuleNotFoundError as err:
        if err.name != "torchvision":
            raise
    from sglang.srt.sampling.sampling_batch_info import SamplingBatchInfo

    origin = importlib.util.find_spec("sglang.srt.layers.sampler").origin
    with open(origin) as f:
        tree = ast.parse(f.read())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "apply_custom_logit_processor")
    namespace = {"torch": torch, "SamplingBatchInfo": SamplingBatchInfo, "logger": logging.getLogger(origin)}
    exec(compile(ast.Module(body=[node], type_ignores=[]), origin, "exec"), namespace)
    return namespace["apply_custom_logit_processor"]


def request_for(name: str, **kw) -> Request:
    fmt = FORMATS_UNDER_TEST[name]
    return Request(messages=build_messages(QUESTION, fmt), contract=fmt, sampling=SamplingParams(**kw))


@functools.lru_cache(maxsize=None)
def _runs(executor) -> dict:
    """One greedy constrained run per format through the real torch executor (done once)."""
    streams = {name: executor.submit(request_for(name, max_new_tokens=120)) for name in FORMATS_UNDER_TEST}
    return {name: stream.wait(timeout=600) for name, stream in streams.items()}


def real_runs(executor) -> dict:
    return _runs(executor)


def teacher_forced_logits(executor, request: Request, token_ids: list[int]) -> torch.Tensor:
    """Raw next-token logits [len(token_ids), V] at every output position, one forward pass."""
    from corea_engine.runtime.sglang_executor import ChunkDecoder

    prompt = ChunkDecoder(executor.tokenizer).encode(request)
    ids = torch.tensor([prompt + token_ids])
    with torch.no_grad():
        logits = executor.model(input_ids=ids).logits[0].float()
    return logits[len(prompt) - 1 : len(prompt) - 1 + len(token_ids)]


def grammar_bitmasks(executor, fmt, token_ids: list[int]) -> torch.Tensor:
    """Our runtime's bitmask before each output token and after the last: [len(token_ids) + 1, W]."""
    import xgrammar as xgr

    matcher = GrammarCache.for_tokenizer(executor.tokenizer, executor.vocab_size).matcher(fmt)
    masks = xgr.allocate_token_bitmask(len(token_ids) + 1, executor.vocab_size)
    for i, token in enumerate(token_ids):
        matcher.fill_next_token_bitmask(masks, i)
        assert matcher.accept_token(token), f"our grammar refuses its own output at token {i}"
    matcher.fill_next_token_bitmask(masks, len(token_ids))
    return masks


def masked_log_softmax(logits: torch.Tensor, bitmasks: torch.Tensor) -> torch.Tensor:
    """What SGLang's sampler computes logprobs from: grammar-masked logits (masked = -inf)."""
    from corea_kernels import unpack_bitmask

    allowed = unpack_bitmask(bitmasks, logits.shape[1])
    return torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)


class RequestRecordSink:
    """Stands in for SGLang's Req, of which the processor touches only `customized_info`.

    (sglang.srt.managers.schedule_batch imports torchvision, which cannot load here.) SGLang
    hands processors a weakref.proxy of the Req; so do the tests.
    """

    customized_info = None


def sglang_batch(logits, custom_params, processor_str, rows):
    from sglang.srt.sampling.custom_logit_processor import CustomLogitProcessor
    from sglang.srt.sampling.sampling_batch_info import ProcessorEntry, SamplingBatchInfo

    n = logits.shape[0]
    return SamplingBatchInfo(
        temperatures=torch.ones(n, 1),
        top_ps=torch.ones(n),
        top_ks=torch.ones(n, dtype=torch.int32),
        min_ps=torch.zeros(n),
        is_all_greedy=True,
        is_any_greedy=True,
        need_top_p_sampling=False,
        need_top_k_sampling=False,
        need_min_p_sampling=False,
        vocab_size=logits.shape[1],
        has_custom_logit_processor=True,
        custom_params=custom_params,
        # As SamplingBatchInfo.from_schedule_batch builds it: one entry per serialised processor.
        custom_logit_processor={
            hash(processor_str): ProcessorEntry(
                processor=CustomLogitProcessor.from_str(processor_str), rows=rows, indices=torch.tensor(rows)
            )
        },
        device="cpu",
    )


FLOAT_MIN = torch.finfo(torch.float32).min


@functools.lru_cache(maxsize=None)
def recorded(executor, name):
    """(torch result, raw logits [n, V], bitmasks [n + 1, W], SGLang logprob entries per position)."""
    result = real_runs(executor)[name]
    fmt = FORMATS_UNDER_TEST[name]
    logits = teacher_forced_logits(executor, request_for(name), result.token_ids)
    masks = grammar_bitmasks(executor, fmt, result.token_ids)
    # SGLang clamps -inf log-probabilities (masked tokens) to the float minimum.
    logprobs = masked_log_softmax(logits, masks[:-1]).clamp(min=FLOAT_MIN)
    scale_ids = fmt.scale.token_ids(executor.tokenizer)
    entries = [[(float(row[t]), t, None) for t in scale_ids] for row in logprobs]
    return result, logits, masks, entries


def sglang_chunks(seq, token_ids, entries, finish_reason, *, every=3, extra_meta=None):
    """Cumulative chunks every `every` tokens; the last carries finish_reason."""
    chunks = []
    for end in list(range(every, len(token_ids), every)) + [len(token_ids)]:
        last = end == len(token_ids)
        meta = {
            "id": seq.rid,
            "finish_reason": finish_reason if last else None,
            "prompt_tokens": len(seq.prompt_ids),
            "completion_tokens": end,
            "output_token_logprobs": [(0.0, t, None) for t in token_ids[:end]],
            "output_token_ids_logprobs": entries[:end],
        }
        for key, values in (extra_meta or {}).items():
            meta[key] = values[:end]
        chunks.append({"text": None, "output_ids": list(token_ids[:end]), "meta_info": meta})
    return chunks
