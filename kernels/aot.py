"""Compile the confidence kernel for a GPU architecture without a GPU, and read its resource usage.

    python -m corea_kernels.aot [--arch 90] [--dtype bf16] [--mask] [--block-v 8192] [--num-warps 8]

Triton's full pipeline (TTIR -> TTGIR -> LLVM -> PTX -> ptxas cubin) runs on the CPU; only loading
the cubin needs a driver. The tests use this to check that the kernel builds for Hopper with no
register spills, which the CPU interpreter cannot show. Prints one JSON object: registers per
thread, local (spill) bytes, shared bytes, 16-byte global loads in the PTX.

The specialisation mirrors a launch on [256, 152064] logits: every pointer 16-byte aligned and
every integer argument but num_conf divisible by 16 (what lets Triton vectorise the loads).
Must run without TRITON_INTERPRET (the kernel has to be a JIT function, not an interpreted one).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

_POINTER_TYPES = {
    "logits_ptr": None,  # the logits dtype
    "bitmask_ptr": "*i32",
    "token_ids_ptr": "*i64",
    "values_ptr": "*fp32",
    "log_normalizer_ptr": "*fp32",
    "probs_ptr": "*fp32",
    "mass_ptr": "*fp32",
    "expected_ptr": "*fp32",
    "entropy_ptr": "*fp32",
    "argmax_ptr": "*i64",
}
_NOT_DIVISIBLE = {"num_conf"}


def compile_kernel(arch: int, dtype: str, has_mask: bool, block_v: int, num_warps: int, num_stages: int) -> dict:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("compile_kernel needs TRITON_INTERPRET unset: the interpreter has no compiler")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .confidence import _LOWEST_FP32, _confidence_stats_kernel

    kernel = _confidence_stats_kernel
    constexprs = {"HAS_MASK": has_mask, "BLOCK_V": block_v, "BLOCK_K": 16, "LOWEST": _LOWEST_FP32}
    signature, attrs = {}, {}
    for index, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        if name in _POINTER_TYPES:
            signature[name] = _POINTER_TYPES[name] or f"*{dtype}"
        else:
            signature[name] = "i32"
        if name not in _NOT_DIVISIBLE:
            attrs[(index,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(
        source, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps, "num_stages": num_stages}
    )
    usage = _resource_usage(compiled.asm["cubin"])
    usage["vector_loads_16B"] = len(re.findall(r"ld\.global(?:\.[a-z0-9]+)*\.v4\.b32", compiled.asm["ptx"]))
    usage.update(arch=arch, dtype=dtype, has_mask=has_mask, block_v=block_v, num_warps=num_warps)
    return usage


def _resource_usage(cubin: bytes) -> dict:
    """REG / LOCAL / SHARED of the kernel, from cuobjdump (shipped with Triton's CUDA backend)."""
    from triton.backends.nvidia.compiler import get_ptxas

    cuobjdump = Path(get_ptxas(90).path).with_name("cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        report = subprocess.run(
            [str(cuobjdump), "--dump-resource-usage", handle.name], capture_output=True, text=True, check=True
        ).stdout
    fields = dict(re.findall(r"\b(REG|LOCAL|SHARED|STACK):(\d+)", report.split("Function", 1)[1]))
    return {"registers": int(fields["REG"]), "local_bytes": int(fields["LOCAL"]),
            "stack_bytes": int(fields["STACK"]), "shared_bytes": int(fields["SHARED"])}


def main() -> None:
    parser = argparse.ArgumentParser(description="Compile the confidence kernel ahead of time")
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="bf16")
    parser.add_argument("--mask", action="store_true")
    parser.add_argument("--block-v", type=int, default=8192)
    parser.add_argument("--num-warps", type=int, default=8)
    parser.add_argument("--num-stages", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(compile_kernel(args.arch, args.dtype, args.mask, args.block_v, args.num_warps, args.num_stages)))


if __name__ == "__main__":
    main()
