"""Torch reference of the confidence-distribution kernel: the definition the Triton kernel matches.

It is also what runs on CPU, so it avoids materialising a [B, V] log-softmax: one (masked) row
max, one sum of shifted exponentials and a gather of the K confidence columns.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from .inputs import check_inputs
from .types import ConfidenceStats

# Masked logits are moved this far down to take the row max over allowed tokens only: adding
# -FLT_MAX * 1.0 keeps them finite (no slow exp(-inf) path) and adding -FLT_MAX * 0.0 is exact.
_LOWEST_FP32 = -3.4028234663852886e38


def _unpack_bits(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Bits of the int32 words as uint8 0/1 [B, V], bit j of word w at column 32w + j."""
    words = bitmask.to(torch.int32).contiguous()
    if words.device.type == "cpu" and sys.byteorder == "little":
        # numpy's unpackbits is ~20x faster than shifting words in torch on CPU.
        bits = np.unpackbits(words.numpy().view(np.uint8), axis=1, bitorder="little")
        return torch.from_numpy(bits)[:, :vocab_size]
    shifts = torch.arange(32, device=words.device, dtype=torch.int32)
    bits = (words.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(words.shape[0], -1)[:, :vocab_size].to(torch.uint8)


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """xgrammar's int32 bitmask [B, ceil(V/32)] (bit set = token allowed) -> bool [B, V]."""
    return _unpack_bits(bitmask, vocab_size).bool()


def confidence_stats_reference(
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    values: torch.Tensor,
    bitmask: torch.Tensor | None = None,
) -> ConfidenceStats:
    """Distribution over the confidence tokens of each row of `logits` [B, V].

    token_ids [K] (int) and values [K] (float) define the scale; bitmask is the grammar mask.
    A row whose confidence tokens are all masked gets probs 0, mass 0, expected 0, entropy 0
    and argmax -1; a row with no allowed token at all also gets log_normalizer -inf.

    The normaliser is kept as (row max, log of the shifted sum) and probs are
    exp((logit - max) - log_sum): subtracting the max first is exact for nearby logits, so the
    probabilities do not inherit the rounding of a large log-normaliser (ulp 1e-3 at 1e4).
    """
    check_inputs(logits, token_ids, values, bitmask)
    token_ids = token_ids.to(device=logits.device, dtype=torch.long)
    values = values.to(device=logits.device, dtype=torch.float32)
    x = logits.float()
    picked = x.index_select(1, token_ids)  # [B, K]
    if bitmask is None:
        row_max = x.amax(dim=1, keepdim=True)  # -inf only if every logit is -inf
        shift = torch.where(torch.isfinite(row_max), row_max, 0.0)
        sum_exp = (x - shift).exp_().sum(dim=1)
    else:
        # Multiplying by 0/1 weights instead of filling with -inf: masked fills and exp(-inf)
        # are several times slower than plain arithmetic on CPU.
        bitmask = bitmask.to(device=logits.device, dtype=torch.int32)
        allowed = _unpack_bits(bitmask, x.shape[1]).float()
        blocked = _unpack_bits(~bitmask, x.shape[1]).float()
        row_max = torch.add(x, blocked, alpha=_LOWEST_FP32).amax(dim=1, keepdim=True)
        shift = torch.where(torch.isfinite(row_max), row_max, 0.0)
        # Masked logits above the allowed max would overflow exp; clamped, they weigh 0 anyway.
        sum_exp = torch.linalg.vecdot((x - shift).clamp_max_(0.0).exp_(), allowed)
        picked = picked.masked_fill(allowed.index_select(1, token_ids) == 0, float("-inf"))
    has_any = sum_exp > 0  # [B]; False on a row with no allowed (finite) token
    log_sum = torch.log(torch.where(has_any, sum_exp, 1.0))
    shift = shift.squeeze(1)
    log_normalizer = torch.where(has_any, shift + log_sum, float("-inf"))
    probs = torch.where(has_any.unsqueeze(1), torch.exp((picked - shift.unsqueeze(1)) - log_sum.unsqueeze(1)), 0.0)
    mass = probs.sum(dim=1)
    has_mass = mass > 0
    safe_mass = torch.where(has_mass, mass, 1.0)
    q = probs / safe_mass.unsqueeze(1)
    expected = torch.where(has_mass, (q * values).sum(dim=1), 0.0)
    entropy = -torch.where(q > 0, q * torch.log(q), 0.0).sum(dim=1)
    argmax = torch.where(has_mass, probs.argmax(dim=1), -1)
    return ConfidenceStats(log_normalizer, probs, mass, expected, entropy, argmax)
