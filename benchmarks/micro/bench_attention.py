"""Decode attention of one step (SmolLM2-135M's 30 layers, 3 KV heads x 3 query heads, head_dim 64)
over slot-cache layers: the CPU kernel (runtime/decode_attention.py) against SDPA with the padding
mask, as LlamaDecodeStep runs them. Rows have lengths width-1, width-4, ... (different lengths, as
continuous batching has them); each layer is its own tensor, so the cache streams from memory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from corea_engine.runtime import decode_attention as kernel

LAYERS, KV_HEADS, GROUPS, DIM, WIDTH, CAPACITY = 30, 3, 3, 64, 185, 384


def _step_inputs(batch):
    g = torch.Generator().manual_seed(0)
    cache = [torch.randn(2, batch, KV_HEADS, CAPACITY, DIM, generator=g).to(torch.bfloat16) for _ in range(LAYERS)]
    queries = torch.randn(batch, KV_HEADS, GROUPS, DIM, generator=g).to(torch.bfloat16)
    positions = (WIDTH - 1 - 3 * torch.arange(batch)).clamp(min=0)
    mask = (torch.arange(WIDTH)[None, :] <= positions[:, None])[:, None, None, :]
    return [(kv[0, :, :, :WIDTH], kv[1, :, :, :WIDTH]) for kv in cache], queries, positions, mask


@pytest.mark.parametrize("batch", (1, 8, 32))
def bench_step_attention_sdpa(benchmark, batch):
    layers, queries, _, mask = _step_inputs(batch)
    benchmark(lambda: [F.scaled_dot_product_attention(queries, k, v, attn_mask=mask, scale=DIM ** -0.5)
                       for k, v in layers])


@pytest.mark.parametrize("batch", (1, 8, 32))
def bench_step_attention_kernel(benchmark, batch):
    reason = kernel.unavailable_reason(GROUPS, DIM)
    if reason is not None:
        pytest.skip(reason)
    layers, queries, positions, _ = _step_inputs(batch)
    benchmark(lambda: [kernel.decode_attention(queries, k, v, positions, DIM ** -0.5) for k, v in layers])
