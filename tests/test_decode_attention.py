"""The CPU decode-attention kernel (runtime/decode_attention.cpp) against SDPA.

Bounds: the kernel's output is its fp32 result rounded once to bf16, so it stays within one bf16
step (relative 2^-8) of SDPA computed in fp32 on the same bf16 inputs (measured: 1e-3 absolute);
a whole bf16 step with it stays within STEP_TOLERANCE of the step with SDPA, same top-1 token
(measured 0.25-0.56 over the three steps below: 1-2 bf16 steps of logits ~30, as the two kernels'
bf16 outputs round apart and the difference runs through 30 layers).
On a CPU without the kernel's flags these tests check that the step says "sdpa" and skip the rest.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from corea_engine.runtime import decode_attention as kernel
from corea_engine.runtime.dtypes import cpu_flags
from corea_engine.runtime.llama_forward import LlamaDecodeStep
from tests.test_llama_forward import PROMPTS, _reference

KV_HEADS, GROUPS, DIM = 3, 3, 64  # SmolLM2-135M's attention
HAS_FLAGS = set(kernel.CPU_FLAGS) <= cpu_flags()
WITHOUT_FLAGS = f"the CPU lacks one of {kernel.CPU_FLAGS}: SDPA runs there"


def needs_kernel(test):  # skipped, as expected, on a CPU without the flags
    return pytest.mark.expected_skip(WITHOUT_FLAGS)(pytest.mark.skipif(not HAS_FLAGS, reason=WITHOUT_FLAGS)(test))


# A step with the kernel against the step with SDPA: ~8 bf16 steps of logits ~30 (measured 0.25-0.56:
# the two kernels' bf16 outputs round apart and the difference runs through 30 layers).
STEP_TOLERANCE = 1.0


def test_the_kernel_is_available_exactly_where_the_cpu_has_its_flags():
    reason = kernel.unavailable_reason(GROUPS, DIM)
    if HAS_FLAGS:
        assert reason is None  # a build failure here is a failure, not a fallback
        assert "head_dim 64 or 128" in kernel.unavailable_reason(GROUPS, 96)
    else:
        assert "the CPU lacks" in reason


@needs_kernel
def test_the_kernel_reads_each_rows_live_columns_of_its_own_head():
    torch.manual_seed(0)
    columns = [1, 300, 17, 64, 129, 65]  # one column, several blocks, block edges and tails
    batch, slots, capacity = len(columns), len(columns) + 2, 320
    # a cache layer as the step sees it: layer 1 of [layers, slots, kv_heads, capacity, dim]
    keys = torch.randn(2, slots, KV_HEADS, capacity, DIM).to(torch.bfloat16)
    values = torch.randn(2, slots, KV_HEADS, capacity, DIM).to(torch.bfloat16)
    for row, n in enumerate(columns):  # dead columns and slots past the batch are NaN: any read shows
        keys[:, row, :, n:] = values[:, row, :, n:] = float("nan")
    keys[:, batch:] = values[:, batch:] = float("nan")
    # queries as the step slices them out of its q-and-k tensor
    qk = torch.randn(batch, KV_HEADS * GROUPS + KV_HEADS, DIM).to(torch.bfloat16)
    queries = qk[:, :KV_HEADS * GROUPS].view(batch, KV_HEADS, GROUPS, DIM)
    positions = torch.tensor(columns) - 1
    width = max(columns)

    layer_keys, layer_values = keys[1, :batch, :, :width], values[1, :batch, :, :width]
    out = kernel.decode_attention(queries, layer_keys, layer_values, positions, DIM ** -0.5)

    assert out.shape == (batch, KV_HEADS * GROUPS * DIM) and out.dtype == torch.bfloat16
    for row, n in enumerate(columns):
        expected = F.scaled_dot_product_attention(queries[row].float(), keys[1, row, :, :n].float(),
                                                  values[1, row, :, :n].float(), scale=DIM ** -0.5)
        torch.testing.assert_close(out[row].float(), expected.reshape(-1), rtol=2 ** -8, atol=1e-5)


@needs_kernel
def test_a_failed_build_is_a_reason_logged_once_not_a_crash(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "build"))
    broken = tmp_path / "broken_attention.cpp"
    broken.write_text("#include <torch/library.h>\nnot C++ at all;\n")
    with caplog.at_level(logging.WARNING, logger=kernel.__name__):
        reason = kernel._build(broken)
        assert kernel._build(broken) == reason  # built (and logged) once per process
    assert reason.startswith("building broken_attention.cpp failed: ") and "error:" in reason, reason
    assert caplog.text.count(reason) == 1


@needs_kernel
def test_a_lock_left_by_a_killed_build_is_a_reason_not_a_hang(tmp_path, monkeypatch, caplog):
    # torch's build lock outlives a process killed mid-build; load() alone would wait forever
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "build"))
    monkeypatch.setattr(kernel, "BUILD_LOCK_WAIT_S", 1.0)
    source = tmp_path / "locked_attention.cpp"
    source.write_text("#include <torch/library.h>\n")
    lock = kernel.build_directory("corea_locked_attention") / "lock"
    lock.touch()
    with caplog.at_level(logging.WARNING, logger=kernel.__name__):
        reason = kernel._build(source)
    assert reason == f"{lock} has been held for over 1 s (a build killed midway leaves it: remove it)"
    assert reason in caplog.text


@needs_kernel
def test_a_build_without_a_compiler_names_the_missing_compiler(tmp_path, monkeypatch):
    # nothing on PATH, as in an unactivated venv on a machine without a C++ compiler: the build still
    # finds the venv's ninja (beside the interpreter) and reports the compiler as missing
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "build"))
    source = tmp_path / "no_compiler_attention.cpp"
    source.write_text(kernel._SOURCE.read_text())
    reason = kernel._build(source)
    assert reason == "building no_compiler_attention.cpp failed: no C++ compiler (c++) on PATH; CXX names another"
    assert os.environ["PATH"] == str(tmp_path / "empty")  # the caller's PATH is left as it was


@needs_kernel
def test_the_build_finds_the_venvs_ninja_when_path_lacks_it(tmp_path, monkeypatch):
    tools = tmp_path / "bin"  # a compiler and its assembler and linker on PATH, no ninja (an unactivated venv)
    tools.mkdir()
    for tool in ("c++", "as", "ld"):
        (tools / tool).symlink_to(shutil.which(tool))
    monkeypatch.setenv("PATH", str(tools))
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "build"))
    source = tmp_path / "venv_ninja_attention.cpp"  # registers no op: the kernel's are loaded already
    source.write_text("int corea_ninja_probe() { return 1; }\n")
    assert kernel._build(source) is None
    assert os.environ["PATH"] == str(tools)


@needs_kernel
def test_positions_outside_the_cache_are_refused():
    keys = torch.zeros(2, KV_HEADS, 8, DIM, dtype=torch.bfloat16)
    queries = torch.zeros(2, KV_HEADS, GROUPS, DIM, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="position 8 of row 1 is outside the cache's 8 columns"):
        kernel.decode_attention(queries, keys, keys, torch.tensor([0, 8]), 1.0)


@torch.no_grad()
@pytest.mark.expected_skip(WITHOUT_FLAGS)
def test_a_bf16_step_with_the_kernel_is_the_step_with_sdpa(slm_executor):
    model = copy.deepcopy(slm_executor.model).to(torch.bfloat16)
    with_kernel, with_sdpa = LlamaDecodeStep(model), LlamaDecodeStep(model)
    assert with_kernel.attention == ("corea-cpu" if HAS_FLAGS else "sdpa")
    assert LlamaDecodeStep(slm_executor.model).attention == "sdpa"  # the fp32 reference keeps SDPA
    if not HAS_FLAGS:
        pytest.skip(WITHOUT_FLAGS)
    with_sdpa.attention = "sdpa"
    tokenizer = slm_executor.tokenizer
    prompts = [tokenizer.encode(PROMPTS[0]), tokenizer.encode(PROMPTS[1]), tokenizer.encode(PROMPTS[1])[:1]]
    caches, tokens = [with_kernel.new_cache(4, 256), with_sdpa.new_cache(4, 256)], []
    for ids in prompts:  # three rows, three lengths (one of a single column)
        kv, token, _ = _reference(model, ids, steps=0)
        tokens.append(token)
        for cache in caches:
            cache.admit(kv, 0, torch.arange(len(ids)))
    tokens = torch.cat(tokens)
    for _ in range(3):
        got, expected = with_kernel(tokens, caches[0]), with_sdpa(tokens, caches[1])
        assert (got - expected).abs().max() <= STEP_TOLERANCE
        assert torch.equal(got.argmax(-1), expected.argmax(-1))
        tokens = expected.argmax(-1)
