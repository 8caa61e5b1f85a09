"""Fused kernels of corea_engine, imported as `corea_kernels` (the PyPI name `kernels` is taken).

confidence_stats(logits, token_ids, values, bitmask=None) reads the distribution over the
confidence tokens from a batch of logits. Dispatch looks at the tensor: CUDA tensors go to the
Triton kernel, everything else to the torch reference, which defines the result.
"""

from .reference import confidence_stats_reference, unpack_bitmask
from .types import ConfidenceStats


def confidence_stats(logits, token_ids, values, bitmask=None) -> ConfidenceStats:
    """The one entry point the runtimes call; see kernels/reference.py for the definition."""
    if logits.is_cuda:
        from .confidence import confidence_stats_triton

        return confidence_stats_triton(logits, token_ids, values, bitmask)
    return confidence_stats_reference(logits, token_ids, values, bitmask)


__all__ = ["ConfidenceStats", "confidence_stats", "confidence_stats_reference", "unpack_bitmask"]
