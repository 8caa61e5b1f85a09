"""The plain torch way to read the confidence distribution: the baseline the kernels are timed against.

Full-width temporaries at every step (the fp32 copy, the expanded mask, the [B, V] log-softmax),
as one would write it without a fused kernel. It returns the same ConfidenceStats as the reference.
"""

from __future__ import annotations

import torch

from corea_kernels import ConfidenceStats


def confidence_stats_composite(logits, token_ids, values, bitmask=None) -> ConfidenceStats:
    x = logits.float()
    if bitmask is not None:
        shifts = torch.arange(32, device=bitmask.device, dtype=torch.int32)
        allowed = ((bitmask.unsqueeze(-1) >> shifts) & 1).reshape(bitmask.shape[0], -1)[:, : x.shape[1]].bool()
        x = x.masked_fill(~allowed, float("-inf"))
    log_probs = torch.log_softmax(x, dim=-1)
    log_normalizer = torch.logsumexp(x, dim=-1)
    probs = log_probs.gather(1, token_ids.long().unsqueeze(0).expand(x.shape[0], -1)).exp()
    probs = torch.nan_to_num(probs, nan=0.0)  # rows with no allowed token: -inf - -inf
    mass = probs.sum(dim=1)
    q = probs / mass.clamp_min(torch.finfo(torch.float32).tiny).unsqueeze(1)
    expected = (q * values).sum(dim=1)
    entropy = -(q * q.clamp_min(torch.finfo(torch.float32).tiny).log()).sum(dim=1)
    argmax = torch.where(mass > 0, probs.argmax(dim=1), -1)
    return ConfidenceStats(log_normalizer, probs, mass, expected, entropy, argmax)
