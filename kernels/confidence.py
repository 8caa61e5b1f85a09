"""Triton kernel: the confidence distribution of each logits row, grammar mask applied on the fly.

One pass over each row of logits [B, V] keeps an online (max, sum of exponentials) over the
allowed tokens; the K confidence logits are then gathered (K loads, a few cache lines) and the
per-row statistics of kernels/reference.py are written. The mask is read as xgrammar packs it
(int32 words, bit j of word w = token 32w + j, set = allowed) and never expanded in memory.

The layout follows xgrammar's own apply_token_bitmask_inplace_triton: a persistent grid of
programs looping over work items, and a bitmask word unpacked against tl.arange(0, 32). Here a
work item is a whole row, and a tile of logits is read as [BLOCK_V // 32, 32] so that tile row w
lines up with bitmask word w without any reshape.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .inputs import check_inputs
from .types import ConfidenceInputError, ConfidenceStats

# The running max starts finite: with -inf, exp(max_old - max_new) is exp(-inf + inf) = NaN on a
# row whose first tiles are fully masked (seen in the Triton interpreter). -FLT_MAX is below
# every finite logit, so it is replaced by the first allowed one.
_LOWEST_FP32 = -3.4028234663852886e38


@triton.jit
def _load_tile(row_logits, row_mask, tile_start, word_idx, bit_idx, vocab_size, num_words, HAS_MASK: tl.constexpr):
    """Logits [BLOCK_V // 32, 32] from column tile_start (-inf past the row) and, with a mask,
    the bitmask word of each tile row (0 past the row); both in the logits' own dtype / int32."""
    tile_word = tile_start // 32 + word_idx
    cols = tile_word[:, None] * 32 + bit_idx[None, :]
    x = tl.load(row_logits + cols, mask=cols < vocab_size, other=float("-inf"))
    if HAS_MASK:
        word = tl.load(row_mask + tile_word, mask=tile_word < num_words, other=0)
    else:
        word = tl.zeros_like(word_idx)
    return x, word


@triton.jit
def _confidence_stats_kernel(
    logits_ptr,
    logits_row_stride,
    bitmask_ptr,
    bitmask_row_stride,
    token_ids_ptr,
    values_ptr,
    log_normalizer_ptr,
    probs_ptr,
    mass_ptr,
    expected_ptr,
    entropy_ptr,
    argmax_ptr,
    num_rows,
    vocab_size,
    num_conf,
    HAS_MASK: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
    LOWEST: tl.constexpr,
):
    """Per-row statistics of the distribution over the K confidence tokens.

    Parameters
    ----------
    logits_ptr : pointer to fp32 / bf16 / fp16 [num_rows, vocab_size]
        Raw logits; columns contiguous, rows `logits_row_stride` elements apart. Only read.
    logits_row_stride : int
        Elements between the starts of two logits rows (a [B, T, V] slice has T * V).
    bitmask_ptr : pointer to int32 [num_rows, >= ceil(vocab_size / 32)]
        xgrammar's packed grammar mask, bit set = token allowed. Unused when HAS_MASK is False.
    bitmask_row_stride : int
        Words between the starts of two bitmask rows.
    token_ids_ptr : pointer to integer [num_conf]
        Vocabulary ids of the confidence tokens; an id outside [0, vocab_size) reads as masked.
    values_ptr : pointer to fp32 [num_conf]
        The confidence value each token stands for (0.0 .. 0.9 for the digit scale).
    log_normalizer_ptr, mass_ptr, expected_ptr, entropy_ptr : pointers to fp32 [num_rows]
    probs_ptr : pointer to fp32 [num_rows, num_conf], contiguous
    argmax_ptr : pointer to int64 [num_rows]
        Outputs, every element written; see kernels/types.py for their meaning.
    num_rows : int
        B. Program p handles rows p, p + num_programs, ... (a persistent grid).
    vocab_size : int
        V, the logits columns that count; need not be a multiple of BLOCK_V or 32.
    num_conf : int
        K, the number of confidence tokens; at most BLOCK_K.
    HAS_MASK : constexpr bool
        Whether bitmask_ptr is read; a separate compilation, so the unmasked pass carries no mask code.
    BLOCK_V : constexpr int
        Logits read per loop step, a power of two and a multiple of 32 (one bitmask word per 32).
    BLOCK_K : constexpr int
        num_conf rounded up to a power of two.
    LOWEST : constexpr float
        Starting value of the running max: finite and below any logit (see _LOWEST_FP32).
    """
    pid = tl.program_id(0)
    words_per_tile: tl.constexpr = BLOCK_V // 32
    word_idx = tl.arange(0, words_per_tile)  # tile row: one bitmask word each
    bit_idx = tl.arange(0, 32)  # tile column: the bit of that word
    num_words = tl.cdiv(vocab_size, 32)
    conf = tl.arange(0, BLOCK_K)
    conf_ok = conf < num_conf
    conf_ids = tl.load(token_ids_ptr + conf, mask=conf_ok, other=0).to(tl.int64)
    conf_ok = conf_ok & (conf_ids >= 0) & (conf_ids < vocab_size)
    conf_values = tl.load(values_ptr + conf, mask=conf_ok, other=0.0).to(tl.float32)

    for row in tl.range(pid, num_rows, tl.num_programs(0)):
        row_logits = logits_ptr + tl.cast(row, tl.int64) * logits_row_stride
        row_mask = bitmask_ptr + tl.cast(row, tl.int64) * bitmask_row_stride
        run_max = tl.full((), LOWEST, tl.float32)
        # Per-lane partial sums, rescaled by a scalar and reduced once after the loop: one
        # cross-warp reduction (the max) per tile instead of two.
        run_sum = tl.zeros((words_per_tile, 32), tl.float32)
        # Software prefetch: tile t + 1 is requested before tile t is reduced, so a program keeps
        # a tile of loads in flight while it computes (Triton does not pipeline these loads).
        x_next, word_next = _load_tile(row_logits, row_mask, 0, word_idx, bit_idx, vocab_size, num_words, HAS_MASK)
        for tile_start in tl.range(0, vocab_size, BLOCK_V):
            x = x_next.to(tl.float32)
            word = word_next
            x_next, word_next = _load_tile(
                row_logits, row_mask, tile_start + BLOCK_V, word_idx, bit_idx, vocab_size, num_words, HAS_MASK
            )
            if HAS_MASK:
                allowed = ((word[:, None] >> bit_idx[None, :]) & 1) != 0
                x = tl.where(allowed, x, float("-inf"))
            new_max = tl.maximum(run_max, tl.max(x))
            # Masked and padded entries are -inf and add exp(-inf) = 0.
            run_sum = run_sum * tl.exp(run_max - new_max) + tl.exp(x - new_max)
            run_max = new_max

        row_sum = tl.sum(run_sum)
        has_any = row_sum > 0.0
        log_sum = tl.log(tl.where(has_any, row_sum, 1.0))
        tl.store(log_normalizer_ptr + row, tl.where(has_any, run_max + log_sum, float("-inf")))

        picked = tl.load(row_logits + conf_ids, mask=conf_ok, other=float("-inf")).to(tl.float32)
        if HAS_MASK:
            word = tl.load(row_mask + conf_ids // 32, mask=conf_ok, other=0)
            picked = tl.where(((word >> (conf_ids % 32).to(tl.int32)) & 1) != 0, picked, float("-inf"))
        # (logit - max) first, as the reference does: exact for nearby logits.
        probs = tl.where(conf_ok, tl.exp((picked - run_max) - log_sum), 0.0)
        probs = tl.where(has_any, probs, 0.0)
        mass = tl.sum(probs)
        has_mass = mass > 0.0
        q = probs / tl.where(has_mass, mass, 1.0)
        expected = tl.where(has_mass, tl.sum(q * conf_values), 0.0)
        entropy = -tl.sum(tl.where(q > 0.0, q * tl.log(tl.where(q > 0.0, q, 1.0)), 0.0))
        best = tl.argmax(tl.where(conf_ok, probs, -1.0), axis=0)
        tl.store(probs_ptr + tl.cast(row, tl.int64) * num_conf + conf, probs, mask=conf < num_conf)
        tl.store(mass_ptr + row, mass)
        tl.store(expected_ptr + row, expected)
        tl.store(entropy_ptr + row, entropy)
        tl.store(argmax_ptr + row, tl.where(has_mass, best.to(tl.int64), -1))


@functools.lru_cache(maxsize=None)
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def default_block_v(dtype: torch.dtype) -> int:
    """16 KiB of logits per loop step: 4096 fp32 or 8192 bf16/fp16 values."""
    return 4096 if dtype == torch.float32 else 8192


def allocate_outputs(rows: int, num_conf: int, device: torch.device | str) -> ConfidenceStats:
    """Uninitialised outputs in the layout the kernel writes (fp32, argmax int64)."""
    f32 = dict(dtype=torch.float32, device=device)
    return ConfidenceStats(
        log_normalizer=torch.empty(rows, **f32),
        probs=torch.empty(rows, num_conf, **f32),
        mass=torch.empty(rows, **f32),
        expected=torch.empty(rows, **f32),
        entropy=torch.empty(rows, **f32),
        argmax=torch.empty(rows, dtype=torch.int64, device=device),
    )


def confidence_stats_triton(
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    values: torch.Tensor,
    bitmask: torch.Tensor | None = None,
    *,
    out: ConfidenceStats | None = None,
    block_v: int | None = None,
    num_warps: int = 8,
    num_stages: int = 3,
    programs_per_sm: int = 4,
    max_programs: int | None = None,
) -> ConfidenceStats:
    """kernels/reference.py's confidence_stats_reference, fused into one Triton launch.

    out: preallocated outputs (allocate_outputs) to write into; returned as given.
    block_v, num_warps, num_stages: tile size and launch shape (defaults: default_block_v, 8, 3).
    programs_per_sm: persistent-grid size on a GPU, min(B, SMs * programs_per_sm) programs.
    max_programs: a cap on the grid (tests use it to make programs loop over several rows).
    """
    check_inputs(logits, token_ids, values, bitmask)
    rows, vocab = logits.shape
    num_conf = token_ids.numel()
    device = logits.device
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    token_ids = token_ids.to(device=device).contiguous()
    values = values.to(device=device, dtype=torch.float32).contiguous()
    if bitmask is not None:
        bitmask = bitmask.to(device=device)
        if bitmask.stride(1) != 1:
            bitmask = bitmask.contiguous()
    if out is None:
        out = allocate_outputs(rows, num_conf, device)
    _check_outputs(out, rows, num_conf, device)
    if rows == 0:
        return out
    block_v = block_v or default_block_v(logits.dtype)
    if block_v < 32 or block_v & (block_v - 1):
        raise ConfidenceInputError(f"block_v must be a power of two >= 32, got {block_v}")

    programs = rows
    if device.type == "cuda":
        programs = min(rows, _multiprocessors(device.index or 0) * programs_per_sm)
    if max_programs is not None:
        programs = max(1, min(programs, max_programs))
    _confidence_stats_kernel[(programs,)](
        logits,
        logits.stride(0),
        bitmask if bitmask is not None else logits,  # never read without HAS_MASK
        bitmask.stride(0) if bitmask is not None else 0,
        token_ids,
        values,
        out.log_normalizer,
        out.probs,
        out.mass,
        out.expected,
        out.entropy,
        out.argmax,
        rows,
        vocab,
        num_conf,
        HAS_MASK=bitmask is not None,
        BLOCK_V=block_v,
        BLOCK_K=triton.next_power_of_2(num_conf),
        LOWEST=_LOWEST_FP32,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return out


def _check_outputs(out: ConfidenceStats, rows: int, num_conf: int, device: torch.device) -> None:
    expected_shapes = {
        "log_normalizer": (rows,),
        "probs": (rows, num_conf),
        "mass": (rows,),
        "expected": (rows,),
        "entropy": (rows,),
        "argmax": (rows,),
    }
    for name, shape in expected_shapes.items():
        tensor = getattr(out, name)
        dtype = torch.int64 if name == "argmax" else torch.float32
        if tuple(tensor.shape) != shape or tensor.dtype != dtype or tensor.device != device:
            raise ConfidenceInputError(
                f"out.{name} must be {dtype} {shape} on {device}, got {tensor.dtype} {tuple(tensor.shape)} on {tensor.device}"
            )
        if not tensor.is_contiguous():
            raise ConfidenceInputError(f"out.{name} must be contiguous")
