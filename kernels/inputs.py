"""Input checks shared by every backend of the confidence kernel, so bad input fails the same way."""

from __future__ import annotations

import torch

from .types import ConfidenceInputError

_LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_inputs(
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    values: torch.Tensor,
    bitmask: torch.Tensor | None,
) -> None:
    """Raise ConfidenceInputError naming the bad argument; return None when the inputs fit together."""
    if logits.dim() != 2:
        raise ConfidenceInputError(f"logits must be [B, V], got shape {tuple(logits.shape)}")
    if logits.dtype not in _LOGIT_DTYPES:
        raise ConfidenceInputError(f"logits dtype {logits.dtype} is not one of {_LOGIT_DTYPES}")
    rows, vocab = logits.shape
    if vocab == 0:
        raise ConfidenceInputError("logits has an empty vocabulary (V = 0)")
    if token_ids.dim() != 1 or token_ids.numel() == 0:
        raise ConfidenceInputError(f"token_ids must be a non-empty [K], got shape {tuple(token_ids.shape)}")
    if token_ids.dtype.is_floating_point or token_ids.dtype == torch.bool:
        raise ConfidenceInputError(f"token_ids must be integers, got {token_ids.dtype}")
    if values.shape != token_ids.shape:
        raise ConfidenceInputError(
            f"values shape {tuple(values.shape)} does not match token_ids shape {tuple(token_ids.shape)}"
        )
    # Reading a device tensor's range would synchronise every decode step; the Triton kernel
    # masks out-of-range ids instead (they read as probability 0).
    if token_ids.device.type == "cpu":
        low, high = int(token_ids.min()), int(token_ids.max())
        if low < 0 or high >= vocab:
            raise ConfidenceInputError(f"token_ids must lie in [0, {vocab}), got range [{low}, {high}]")
    if bitmask is None:
        return
    words = (vocab + 31) // 32
    if bitmask.dtype != torch.int32:
        raise ConfidenceInputError(f"bitmask must be int32 (xgrammar's layout), got {bitmask.dtype}")
    if bitmask.dim() != 2 or bitmask.shape[0] != rows or bitmask.shape[1] < words:
        raise ConfidenceInputError(
            f"bitmask must be [{rows}, >= {words}] for logits {tuple(logits.shape)}, got {tuple(bitmask.shape)}"
        )
