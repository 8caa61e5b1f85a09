"""Decode attention on the CPU straight from the slot KV cache (decode_attention.cpp).

At 8 rows the bf16 step spent about a third of its time in SDPA over the cache's padded, strided
slices; this kernel reads only each row's live columns, once, with fp32 accumulation and an online
softmax. It is compiled on first use with torch.utils.cpp_extension (ninja and a C++ compiler)
into build_directory() (TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions, then
py<version>_torch<version>/corea_decode_attention) and reused from there; it needs AVX-512 with
BF16 instructions (CPU_FLAGS).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path

import torch

from .dtypes import cpu_flags

log = logging.getLogger(__name__)

BUILD_LOCK_WAIT_S = 120.0  # a build takes ~10 s here; a lock held longer was left by a killed build
CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16")  # what _CFLAGS let it use
_SOURCE = Path(__file__).with_name("decode_attention.cpp")
_CFLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mfma"]


@functools.cache
def unavailable_reason(groups: int, head_dim: int) -> str | None:
    """None when the kernel runs attention of `groups` query heads per KV head of `head_dim`
    dims here (the first call builds it, ~10 s; later calls are free); else why not: the CPU
    lacks a flag, the build failed (logged once), or the kernel was not built for this shape."""
    reason = _build()
    if reason is not None:
        return reason
    try:  # the kernel's own shape check is the one rule
        queries = torch.zeros(1, 1, groups, head_dim, dtype=torch.bfloat16)
        keys = torch.zeros(1, 1, 1, head_dim, dtype=torch.bfloat16)
        decode_attention(queries, keys, keys, torch.zeros(1, dtype=torch.long), 1.0)
    except (RuntimeError, AttributeError) as err:  # a shape it was not built for; a library without the op
        return str(err).splitlines()[0]
    return None


@functools.cache
def _build(source: Path = _SOURCE) -> str | None:
    """Compile and load `source` as the extension corea_<its stem>; None, or why not."""
    missing = [flag for flag in CPU_FLAGS if flag not in cpu_flags()]
    if missing:
        return f"the CPU lacks {', '.join(missing)}"
    from torch.utils import cpp_extension

    name = f"corea_{source.stem}"
    directory = build_directory(name)
    # torch's build lock outlives a process killed mid-build, and load() would wait on it forever.
    lock, waited = directory / "lock", 0.0
    while lock.exists() and waited < BUILD_LOCK_WAIT_S:
        time.sleep(0.5)
        waited += 0.5
    if lock.exists():
        reason = f"{lock} has been held for over {BUILD_LOCK_WAIT_S:g} s (a build killed midway leaves it: remove it)"
        log.warning("decode attention kernel unavailable, SDPA runs instead: %s", reason)
        return reason
    path = os.environ.get("PATH")
    # torch looks for ninja on PATH; ours (a dependency) sits beside the interpreter, which is not on
    # PATH when a venv is used without activating it (`.venv/bin/corea`, `make test`)
    os.environ["PATH"] = os.pathsep.join(p for p in (path, sysconfig.get_path("scripts")) if p)
    try:
        compiler = (os.environ.get("CXX") or "c++").split()[0]  # torch's; it would only warn "not compatible"
        if shutil.which(compiler) is None:
            raise RuntimeError(f"no C++ compiler ({compiler}) on PATH; CXX names another")
        cpp_extension.load(name, [str(source)], extra_cflags=_CFLAGS, is_python_module=False,
                           build_directory=str(directory))
    except Exception as err:  # no compiler or ninja, a compile error: SDPA runs instead
        lines = str(err).strip().splitlines()
        said = next((line for line in lines if "error:" in line), lines[-1] if lines else type(err).__name__)
        reason = f"building {source.name} failed: {said.strip()}"  # the compiler's first error
        log.warning("decode attention kernel unavailable, SDPA runs instead: %s", reason)
        return reason
    finally:
        if path is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = path
    return None


def build_directory(name: str) -> Path:
    """Where the extension `name` is built: TORCH_EXTENSIONS_DIR (else torch's default root), then
    a folder per Python and torch version (a build for another torch is never loaded), then name."""
    from torch.utils import cpp_extension

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    directory = Path(root) / f"py{sys.version_info.major}{sys.version_info.minor}_torch{torch.__version__}" / name
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def decode_attention(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                     positions: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of one new query per row over its slot's live columns.

    queries [B, kv_heads, groups, head_dim] bf16 (GQA: a KV head's query heads together);
    keys, values [slots >= B, kv_heads, capacity, head_dim] bf16, a SlotKVCache layer (any strides
    but a contiguous head_dim); positions [B] int64: row b attends over columns 0..positions[b].
    Returns [B, kv_heads * groups * head_dim] bf16 (heads in queries' order). scale multiplies
    q . k. Raises RuntimeError for shapes, dtypes or positions outside the cache; call only where
    unavailable_reason(groups, head_dim) is None. Unlike SDPA, a NaN score weighs 0 (the max and
    the exp's clamp drop it) instead of making the row NaN; an infinite key gives NaN in both.
    """
    return torch.ops.corea.decode_attention(queries, keys, values, positions, scale)
