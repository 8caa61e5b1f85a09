"""Grammar masking per decode step: xgrammar fills a bitmask per row, then masks [B, 49152] logits."""

from __future__ import annotations

import pytest
import torch
import xgrammar as xgr

from conftest import BATCHES, VOCAB


def advanced_matchers(grammars, tokenizer, batch, fmt="json"):
    """Matchers part-way into the reasoning field, where most decode steps happen."""
    matchers = [grammars.matcher(fmt) for _ in range(batch)]
    prefix = tokenizer.encode('{"reasoning": "She has 3 apples', add_special_tokens=False)
    for m in matchers:
        for token in prefix:
            assert m.accept_token(token), "the prefix must be valid under the grammar"
    return matchers


@pytest.mark.parametrize("batch", BATCHES)
def bench_fill_bitmask(benchmark, grammars, tokenizer, batch):
    matchers = advanced_matchers(grammars, tokenizer, batch)
    bitmask = xgr.allocate_token_bitmask(batch, VOCAB)

    def fill():
        for row, m in enumerate(matchers):
            m.fill_next_token_bitmask(bitmask, row)

    benchmark(fill)


@pytest.mark.parametrize("batch", BATCHES)
def bench_apply_bitmask(benchmark, grammars, tokenizer, batch):
    matchers = advanced_matchers(grammars, tokenizer, batch)
    bitmask = xgr.allocate_token_bitmask(batch, VOCAB)
    for row, m in enumerate(matchers):
        m.fill_next_token_bitmask(bitmask, row)
    logits = torch.randn(batch, VOCAB)

    benchmark(lambda: xgr.apply_token_bitmask_inplace(logits, bitmask))


@pytest.mark.parametrize("batch", BATCHES)
def bench_fill_and_apply(benchmark, grammars, tokenizer, batch):
    """What the engine does each step for a batch under a contract."""
    matchers = advanced_matchers(grammars, tokenizer, batch)
    bitmask = xgr.allocate_token_bitmask(batch, VOCAB)
    logits = torch.randn(batch, VOCAB)

    def step():
        for row, m in enumerate(matchers):
            m.fill_next_token_bitmask(bitmask, row)
        xgr.apply_token_bitmask_inplace(logits, bitmask)

    benchmark(step)
