"""Our decode step over the slot KV cache against transformers' own forward (the reference)."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from corea_engine.runtime.llama_forward import LlamaDecodeStep, UnsupportedModelError

PROMPTS = ("Natalia sold clips to 48 of her friends in April.", "2 + 2 =")


def _reference(model, ids: list[int], steps: int):
    """(prompt KV, logits of `steps` greedy decode steps) from transformers, one row alone."""
    cache = DynamicCache()
    prompt = torch.tensor([ids])
    out = model(input_ids=prompt, use_cache=True, logits_to_keep=1, cache=cache)
    kv = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    token, logits = out.logits[:, -1].argmax(-1), []
    for _ in range(steps):
        step = model(input_ids=token[:, None], use_cache=True, logits_to_keep=1, cache=cache).logits[:, -1].float()
        logits.append(step)
        token = step.argmax(-1)
    return kv, out.logits[:, -1].argmax(-1), logits


@pytest.fixture(scope="module")
def fp32(slm_executor):
    return slm_executor.model, slm_executor.tokenizer, LlamaDecodeStep(slm_executor.model)


@torch.no_grad()
def test_a_row_alone_gets_transformers_logits_bit_for_bit(fp32):
    model, tokenizer, step = fp32
    ids = tokenizer.encode(PROMPTS[0])
    kv, token, expected = _reference(model, ids, steps=6)
    cache = step.new_cache(max_slots=4, max_len=512)
    cache.admit(kv, 0, torch.arange(len(ids)))
    for want in expected:
        got = step(token, cache)
        assert torch.equal(got, want)
        token = want.argmax(-1)
    assert cache.lengths == [len(ids) + 6]


@torch.no_grad()
def test_rows_of_different_lengths_match_each_row_alone_and_survive_a_retire(fp32):
    model, tokenizer, step = fp32
    prompts = [tokenizer.encode(PROMPTS[1]), tokenizer.encode(PROMPTS[0]), tokenizer.encode(PROMPTS[1]) + [28]]
    refs = [_reference(model, ids, steps=4) for ids in prompts]
    cache = step.new_cache(max_slots=4, max_len=512)
    for kv, _, _ in refs:
        cache.admit(kv, 0, torch.arange(kv[0][0].shape[2]))
    tokens = torch.cat([token for _, token, _ in refs])
    got = step(tokens, cache)  # three rows, three lengths: the masked path
    for row, (_, _, expected) in enumerate(refs):
        assert (got[row] - expected[0][0]).abs().max() < 1e-4
    # Retiring row 0 moves the last row into its slot; both remaining rows continue unchanged.
    cache.retire(0)
    assert cache.lengths == [len(prompts[2]) + 1, len(prompts[1]) + 1]
    got = step(torch.stack([refs[2][2][0].argmax(-1)[0], refs[1][2][0].argmax(-1)[0]]), cache)
    assert (got[0] - refs[2][2][1][0]).abs().max() < 1e-4
    assert (got[1] - refs[1][2][1][0]).abs().max() < 1e-4


def test_the_cache_grows_keeping_live_rows_and_refuses_past_its_bounds(fp32):
    _, _, step = fp32
    cache = step.new_cache(max_slots=2, max_len=300)
    cache.reserve(1, 10)
    cache.keys[:, 0, :, :10] = 1.5
    cache.lengths = [10]
    cache.reserve(2, 200)
    assert cache.slots == 2 and cache.capacity >= 200
    assert bool((cache.keys[:, 0, :, :10] == 1.5).all())
    with pytest.raises(ValueError, match="cannot hold"):
        cache.reserve(3, 10)
    with pytest.raises(ValueError, match="cannot hold"):
        cache.reserve(1, 301)


def test_another_architecture_is_refused_by_name(fp32):
    model = fp32[0]
    config = model.config
    saved = config.model_type
    try:
        config.model_type = "gpt2"
        with pytest.raises(UnsupportedModelError, match="gpt2"):
            LlamaDecodeStep(model)
    finally:
        config.model_type = saved


def test_an_idle_cache_frees_storage_a_long_request_grew():
    from corea_engine.runtime.kv_cache import _KEEP_COLUMNS, SlotKVCache

    cache = SlotKVCache(1, 1, 2, max_slots=4, max_len=4 * _KEEP_COLUMNS, dtype=torch.float32, device=torch.device("cpu"))
    kv = [(torch.ones(1, 1, 3 * _KEEP_COLUMNS, 2), torch.ones(1, 1, 3 * _KEEP_COLUMNS, 2))]
    short, long_ = cache.admit(kv, 0, torch.arange(8)), cache.admit(kv, 0, torch.arange(2 * _KEEP_COLUMNS))
    assert cache.capacity >= 2 * _KEEP_COLUMNS and cache.slots == 2
    cache.retire(long_)
    assert cache.capacity >= 2 * _KEEP_COLUMNS  # a live slot keeps the storage
    cache.retire(short)
    assert cache.keys is None and cache.capacity == 0  # idle: the long request's columns are freed
    cache.admit(kv, 0, torch.arange(8))
    cache.clear()
    assert 0 < cache.capacity <= _KEEP_COLUMNS  # a typical width is kept for reuse
    cache.admit(kv, 0, torch.arange(8))
    assert cache.lengths == [8] and torch.equal(cache.keys[0, 0, :, :8], torch.ones(1, 8, 2))
