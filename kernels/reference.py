"""Torch reference of the confidence-distribution kernel: the definition the Triton kernel matches.

It is also what runs on CPU, so it avoids materialising a [B, V] log-softmax: one masked
max / sum-of-exponentials over the row and a gather of the K confidence columns.
"""

from __future__ import annotations

import sys

import torch

from .inputs import check_inputs
from .types import ConfidenceStats

# _BYTE_BITS[b, j] is bit j of byte b: unpacking through it costs one byte per token where
# shifting int32 words costs four, and the bitmask is unpacked on every constrained step.
_BYTE_BITS = ((torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1) == 1


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """xgrammar's int32 bitmask [B, ceil(V/32)] (bit set = token allowed) -> bool [B, V]."""
    words = bitmask.to(torch.int32).contiguous()
    if words.device.type != "cpu" or sys.byteorder != "little":
        shifts = torch.arange(32, device=words.device, dtype=torch.int32)
        bits = (words.unsqueeze(-1) >> shifts) & 1
        return bits.reshape(words.shape[0], -1)[:, :vocab_size].bool()
    # Little-endian: byte i of word w holds tokens 32w + 8i .. 32w + 8i + 7, low bit first.
    allowed = _BYTE_BITS[words.view(torch.uint8).long()]  # [B, 4W, 8]
    return allowed.reshape(words.shape[0], -1)[:, :vocab_size]


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
    picked = logits.index_select(1, token_ids).float()  # [B, K]
    if bitmask is None:
        x = logits.float()
    else:
        allowed = unpack_bitmask(bitmask, logits.shape[1])
        # A fresh fp32 copy either way, so the mask can be written in place.
        x = logits.to(torch.float32, copy=True).masked_fill_(~allowed, float("-inf"))
        picked = picked.masked_fill(~allowed.index_select(1, token_ids), float("-inf"))
    row_max = x.amax(dim=1, keepdim=True)  # [B, 1]; -inf on a row with no allowed token
    shift = torch.where(torch.isfinite(row_max), row_max, 0.0)
    sum_exp = torch.exp(x - shift).sum(dim=1)  # [B]; 0 on a row with no allowed token
    has_any = sum_exp > 0
    log_sum = torch.log(torch.where(has_any, sum_exp, 1.0))
    log_normalizer = torch.where(has_any, shift.squeeze(1) + log_sum, float("-inf"))
    probs = torch.where(has_any.unsqueeze(1), torch.exp((picked - shift) - log_sum.unsqueeze(1)), 0.0)
    mass = probs.sum(dim=1)
    has_mass = mass > 0
    safe_mass = torch.where(has_mass, mass, 1.0)
    q = probs / safe_mass.unsqueeze(1)
    expected = torch.where(has_mass, (q * values).sum(dim=1), 0.0)
    entropy = -torch.where(q > 0, q * torch.log(q), 0.0).sum(dim=1)
    argmax = torch.where(has_mass, probs.argmax(dim=1), -1)
    return ConfidenceStats(log_normalizer, probs, mass, expected, entropy, argmax)
