"""What a reduced-precision runtime is measured by against the fp32 reference (bf16, int8wo).

greedy_agreement: the 20-question set's outputs against tests/data/greedy_reference.json.
worst_step_deviation: one decode step's logits against the fp32 model's over PROMPTS.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.test_llama_forward import PROMPTS, _reference

_RECORDED = json.loads((Path(__file__).parent / "data" / "greedy_reference.json").read_text())
REFERENCE = _RECORDED["outputs"]  # case key -> fp32 greedy token ids
# fp32's (position, expected confidence) on the json cases: recorded alone, read the same batched
READINGS = _RECORDED["readings"]


def greedy_agreement(produced: dict[str, list[int]]) -> tuple[int, int, float]:
    """(first tokens equal, outputs identical, mean share of reference tokens before the first
    difference) of `produced` (case key -> token ids) against REFERENCE."""
    def agreeing(key):
        n = 0
        for a, b in zip(produced[key], REFERENCE[key]):
            if a != b:
                break
            n += 1
        return n

    first = sum(produced[k][:1] == REFERENCE[k][:1] for k in REFERENCE)
    identical = sum(produced[k] == REFERENCE[k] for k in REFERENCE)
    prefix = sum(agreeing(k) / len(REFERENCE[k]) for k in REFERENCE) / len(REFERENCE)
    return first, identical, prefix


@torch.no_grad()
def worst_step_deviation(executor, reference_executor) -> float:
    """Largest |logit - fp32 logit| of one decode step of `executor` after each of PROMPTS (its own
    prefill, the fp32 model's next token); asserts the top-1 token is fp32's every time."""
    tokenizer = reference_executor.tokenizer
    worst = 0.0
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt)
        _, token, expected = _reference(reference_executor.model, ids, steps=1)
        kv, _, _ = _reference(executor.model, ids, steps=0)
        cache = executor._step.new_cache(max_slots=1, max_len=256)
        cache.admit(kv, 0, torch.arange(len(ids)))
        got = executor._step(token, cache)
        worst = max(worst, float((got - expected[0]).abs().max()))
        assert int(got.argmax()) == int(expected[0].argmax()), prompt
    return worst
