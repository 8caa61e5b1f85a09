"""Confidence extraction: the distribution over the scale's ten digit tokens from [B, 49152] logits."""

from __future__ import annotations

import pytest
import torch
import xgrammar as xgr

from conftest import BATCHES, VOCAB
from corea_engine.contract import SCALE
from corea_kernels import confidence_stats_reference


@pytest.fixture(scope="module")
def scale(tokenizer):
    return torch.tensor(SCALE.token_ids(tokenizer)), torch.tensor(SCALE.values, dtype=torch.float32)


@pytest.mark.parametrize("batch", BATCHES)
def bench_confidence_stats(benchmark, scale, batch):
    ids, values = scale
    logits = torch.randn(batch, VOCAB, generator=torch.Generator().manual_seed(0))
    benchmark(confidence_stats_reference, logits, ids, values)


@pytest.mark.parametrize("batch", BATCHES)
def bench_confidence_stats_masked(benchmark, scale, grammars, tokenizer, batch):
    """With the grammar's bitmask at the confidence position (the engine's real call)."""
    ids, values = scale
    fmt = "json"
    prefix = tokenizer.encode('{"reasoning": "3 + 2 = 5.", "answer": "5", "confidence": 0.', add_special_tokens=False)
    bitmask = xgr.allocate_token_bitmask(batch, VOCAB)
    for row in range(batch):
        m = grammars.matcher(fmt)
        for token in prefix:
            assert m.accept_token(token)
        m.fill_next_token_bitmask(bitmask, row)
    logits = torch.randn(batch, VOCAB, generator=torch.Generator().manual_seed(0))
    result = confidence_stats_reference(logits, ids, values, bitmask)
    assert torch.allclose(result.mass, torch.ones(batch)), "only the scale digits are allowed there"
    benchmark(confidence_stats_reference, logits, ids, values, bitmask)
