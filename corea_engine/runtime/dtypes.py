"""The embedded runtime's compute dtype and weight quantization, chosen once at start-up.

"auto" picks bfloat16 where the device computes it natively (CUDA with bf16 support; a CPU
with AVX512-BF16 or AMX-BF16, read from /proc/cpuinfo), else float32. float32 is the reference
numerics (tests/test_greedy_reference.py); bfloat16 halves the weight bytes read per token.
Quantization is separate from the dtype (which stays the activations'): "int8wo" and "int4wo" are
weight-only int8 / int4 (torchao's names) of the decode step's decoder linears, on CPU with
bfloat16 activations; a step of more than llama_forward.MAX_ROWS[quantization] rows runs their bf16
copy instead (faster there), so its numerics are bf16's (the runtime line says "int8wo (<= 4 rows)").
"""

from __future__ import annotations

from pathlib import Path

DTYPES = ("auto", "float32", "bfloat16", "float16")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
QUANTIZATIONS = ("none", "int8wo", "int4wo")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def check_device(device: str):
    """`device` ('cpu', 'cuda', 'cuda:N') as torch.device; ValueError naming it when it is no such
    device or not present here (this torch without CUDA, an index past the GPUs)."""
    import torch  # here, not at the top: the CLI's parser takes DTYPES without loading torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r}")
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r}: no CUDA GPU here (torch {torch.__version__}, "
                             f"built {'without CUDA' if torch.version.cuda is None else 'for CUDA ' + torch.version.cuda})")
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"device {device!r}: only {count} CUDA GPU(s) here")
    return parsed


def resolve_dtype(dtype: str, device: str = "cpu") -> str:
    """A concrete dtype name for `dtype` on `device`. Raises ValueError for an unknown name."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype != "auto":
        return dtype
    if str(device).startswith("cuda"):
        import torch  # here, not at the top: the CLI's parser takes DTYPES without loading torch

        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if cpu_flags() & set(BF16_CPU_FLAGS) else "float32"


def check_quantization(quantization: str, dtype: str, device: str = "cpu") -> str:
    """`quantization` if the decode step runs it with activations in `dtype` (a resolved name, not
    "auto") on `device`; ValueError saying why not (unknown name, float32/float16 activations,
    a device other than the CPU, where the weight-only kernels' speed is unmeasured)."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
    if quantization != "none":
        if dtype != "bfloat16":
            raise ValueError(f"quantization {quantization} runs on bfloat16 activations, not {dtype} "
                             "(--dtype bfloat16, or auto on a CPU with AVX512-BF16/AMX)")
        if not str(device).startswith("cpu"):
            raise ValueError(f"quantization {quantization} runs on the CPU, not {device}")
    return quantization
