"""Torch reference of the confidence-distribution kernel: the definition the Triton kernel matches.

It is also what runs on CPU, so it avoids materialising a [B, V] log-softmax: one masked
logsumexp over the row and a gather of the K confidence columns.
"""

from __future__ import annotations

import torch

from .types import ConfidenceStats


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """xgrammar's int32 bitmask [B, ceil(V/32)] (bit set = token allowed) -> bool [B, V]."""
    shifts = torch.arange(32, device=bitmask.device, dtype=torch.int32)
    bits = (bitmask.to(torch.int32).unsqueeze(-1) >> shifts) & 1
    return bits.reshape(bitmask.shape[0], -1)[:, :vocab_size].bool()


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
    """
    x = logits.float()
    token_ids = token_ids.to(device=x.device, dtype=torch.long)
    values = values.to(device=x.device, dtype=torch.float32)
    picked = x.index_select(1, token_ids)  # [B, K]
    if bitmask is not None:
        allowed = unpack_bitmask(bitmask, x.shape[1])
        x = x.masked_fill(~allowed, float("-inf"))
        picked = picked.masked_fill(~allowed.index_select(1, token_ids), float("-inf"))
    log_normalizer = torch.logsumexp(x, dim=1)  # [B]
    finite = torch.isfinite(log_normalizer).unsqueeze(1)
    probs = torch.where(finite, torch.exp(picked - log_normalizer.unsqueeze(1)), 0.0)
    mass = probs.sum(dim=1)
    has_mass = mass > 0
    safe_mass = torch.where(has_mass, mass, 1.0)
    q = probs / safe_mass.unsqueeze(1)
    expected = torch.where(has_mass, (q * values).sum(dim=1), 0.0)
    entropy = -torch.where(q > 0, q * torch.log(q), 0.0).sum(dim=1)
    argmax = torch.where(has_mass, probs.argmax(dim=1), -1)
    return ConfidenceStats(log_normalizer, probs, mass, expected, entropy, argmax)
