"""Fused kernels of corea_engine, imported as `corea_kernels` (the PyPI name `kernels` is taken).

confidence_stats(logits, token_ids, values, bitmask=None) reads the distribution over the
confidence tokens from a batch of logits. Dispatch looks at the tensor: CUDA tensors go to the
Triton kernel (kernels/confidence.py) when Triton is installed, everything else to the torch
reference (kernels/reference.py), which defines the result.
"""

from __future__ import annotations

import functools
import importlib.util

from .reference import confidence_stats_reference, unpack_bitmask
from .types import ConfidenceInputError, ConfidenceStats


@functools.lru_cache(maxsize=None)
def _triton_installed() -> bool:
    # Triton is a dev extra; a CUDA machine without it still gets correct (slower) results.
    return importlib.util.find_spec("triton") is not None


def backend_for(logits) -> str:
    """'triton' or 'reference': the backend confidence_stats uses for this logits tensor."""
    return "triton" if logits.is_cuda and _triton_installed() else "reference"


def confidence_stats(logits, token_ids, values, bitmask=None) -> ConfidenceStats:
    """The one entry point the runtimes call; see kernels/reference.py for the definition."""
    if backend_for(logits) == "triton":
        from .confidence import confidence_stats_triton

        return confidence_stats_triton(logits, token_ids, values, bitmask)
    return confidence_stats_reference(logits, token_ids, values, bitmask)


__all__ = [
    "ConfidenceInputError",
    "ConfidenceStats",
    "backend_for",
    "confidence_stats",
    "confidence_stats_reference",
    "unpack_bitmask",
]
