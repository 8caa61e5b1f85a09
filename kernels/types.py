"""The result type shared by every backend of the confidence kernel."""

from __future__ import annotations

from typing import NamedTuple

import torch


class ConfidenceStats(NamedTuple):
    """Per-row statistics of the distribution over the K confidence tokens (all fp32 but argmax).

    log_normalizer [B]: logsumexp of the (masked) full-vocabulary logits.
    probs [B, K]: probability of each confidence token under the full (masked) softmax.
    mass [B]: probs summed; the share of the model's belief that is on the scale at all.
    expected [B]: sum_k probs*values / mass; the continuous confidence.
    entropy [B]: entropy (nats) of probs/mass.
    argmax [B] (int64): index into K of the most likely confidence token, -1 if mass is 0.
    """

    log_normalizer: torch.Tensor
    probs: torch.Tensor
    mass: torch.Tensor
    expected: torch.Tensor
    entropy: torch.Tensor
    argmax: torch.Tensor


class ConfidenceInputError(ValueError):
    """Inputs to confidence_stats that do not fit together; the message names the argument."""
