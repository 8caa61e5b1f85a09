"""Weight-only quantization (int8wo, int4wo; bf16 activations) against the fp32 reference.

Each executor runs at most MAX_ROWS[quantization] rows a step, so every step multiplies the
quantized weights (larger batches take the bf16 copy, which tests/test_bf16_tolerance.py bounds).
Stated bounds, per quantization in BOUNDS (measured 2026-11-30 on this CPU, batched as below,
with decode_attention.cpp; SDPA's figures in brackets):
  - int8wo (symmetric per output channel): 40/40 first tokens, 17/40 outputs identical [18], 70%
    of reference tokens before the first difference on average [72%], 12 json readings at fp32's
    position with the expected confidence within 0.025 of fp32's [13, 0.020]; a step's logits
    within 0.56 of fp32 [0.57]. With the lm_head in int8 too [13/40, 60%, 11 within 0.025, 0.89].
  - int4wo (groups of 32, asymmetric: the bundled GGUF's Q4_1 blocks): 40/40, 23/40 [25], 75%
    [80%], 12 readings within 0.041 [14, 0.052]; logits within 0.27 [0.26] - as close to fp32 as
    bf16 itself (21/40, 0.27).
  - greedy, the 20-question set (free text + json contract, tests/data/greedy_reference.json):
    every first token equal, >= min_identical of 40 outputs identical, >= min_prefix of reference
    tokens before the first difference on average;
  - one decode step: logits within logit_tolerance of fp32, same top-1 token;
  - the probe: where a json answer reaches its confidence at the same position as fp32 (at
    least MIN_READINGS of 20), the expected confidence within READING_TOLERANCE of fp32's
    (fp32's readings recorded in the same file: fp32 reads the same alone or batched).
A broken quantization fails (measured for int8wo: every scale 10% off moves the logits 1.8-2.1
from fp32; output channels shifted by one row change the top-1 token).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from corea_engine.evaluation.datasets import load_gsm8k
from corea_engine.runtime.dtypes import QUANTIZATIONS, check_quantization
from corea_engine.runtime.executor import ExecutorError
from corea_engine.runtime.llama_forward import (INT4_GROUP_SIZE, MAX_ROWS, LlamaDecodeStep, int4_blocks,
                                                quantize_int4, quantize_int8)
from corea_engine.runtime.torch_executor import TorchExecutor
from tests.test_llama_forward import PROMPTS, _reference
from tests.tolerance import READINGS, REFERENCE, greedy_agreement, worst_step_deviation
from tests.tools.record_greedy_reference import cases

BOUNDS = {  # quantization: (min_identical of 40, min_prefix, logit_tolerance)
    "int8wo": (13, 0.6, 0.9),
    "int4wo": (20, 0.7, 0.5),
}
MIN_READINGS, READING_TOLERANCE = 10, 0.06
WEIGHT_ONLY = [q for q in QUANTIZATIONS if q != "none"]


@pytest.fixture(scope="module", params=WEIGHT_ONLY)
def quantized_executor(request):
    executor = TorchExecutor(dtype="bfloat16", quantization=request.param, max_batch_size=MAX_ROWS[request.param])
    yield executor
    executor.close()


def test_every_quantization_has_stated_bounds():
    assert set(BOUNDS) == set(WEIGHT_ONLY) == set(MAX_ROWS)


@pytest.mark.parametrize("quantization", WEIGHT_ONLY)
def test_weight_only_needs_bf16_activations_on_the_cpu(quantization, slm_executor):
    assert check_quantization(quantization, "bfloat16", "cpu") == quantization
    with pytest.raises(ExecutorError, match=f"{quantization} runs on bfloat16 activations, not float32"):
        TorchExecutor(model_and_tokenizer=(slm_executor.model, slm_executor.tokenizer), quantization=quantization)
    with pytest.raises(ValueError, match="bfloat16 activations, not float32"):
        check_quantization(quantization, "float32")
    with pytest.raises(ValueError, match="on the CPU, not cuda"):
        check_quantization(quantization, "bfloat16", "cuda")
    with pytest.raises(ValueError, match="int4"):
        check_quantization("int4", "bfloat16")


def test_the_cli_refuses_a_quantization_it_cannot_run():
    out = subprocess.run([sys.executable, "-m", "corea_engine.cli", "solve", "q", "--mode", "slm_only",
                          "--quantization", "int4wo", "--dtype", "float32"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "int4wo runs on bfloat16 activations" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_the_start_up_line_names_the_quantization(quantized_executor, slm_executor):
    # every step multiplies the quantized weights: no "(<= N rows)"
    kernel = ", corea-cpu attention" if quantized_executor._step.attention == "corea-cpu" else ""  # decode_attention.py
    assert quantized_executor.runtime == f"cpu, bfloat16, {quantized_executor.quantization}{kernel}"
    assert slm_executor.runtime == "cpu, float32"


@torch.no_grad()
def test_a_step_above_the_quantized_rows_is_the_bf16_step(quantized_executor):
    model, quantization = quantized_executor.model, quantized_executor.quantization
    rows = MAX_ROWS[quantization]
    linears = [part for layer in quantized_executor._step.layers for part in layer if hasattr(part, "dense")]
    assert linears and all(linear.dense is None for linear in linears)  # no bf16 copy for nothing
    quantized, bf16 = LlamaDecodeStep(model, quantization, max_rows=16), LlamaDecodeStep(model, "none")
    assert quantized.weights == f"{quantization} (<= {rows} rows)"
    prompts = [quantized_executor.tokenizer.encode(p) for p in PROMPTS]
    prompts = [(_reference(model, ids, steps=0)[0], len(ids)) for ids in prompts]

    def cache(step, n):  # the prompts in turn: rows of different lengths
        slots = step.new_cache(max_slots=n, max_len=64)
        for row in range(n):
            kv, length = prompts[row % len(prompts)]
            slots.admit(kv, 0, torch.arange(length))
        return slots

    tokens = torch.tensor([504, 1017, 28, 6248, 339, 17, 1812, 4070, 253])[:rows + 1]
    below = [step(tokens[:rows], cache(step, rows)) for step in (quantized, bf16)]
    assert not torch.equal(*below)  # quantized up to MAX_ROWS rows
    caches = [cache(step, len(tokens)) for step in (quantized, bf16)]
    for _ in range(2):  # the second step attends over the first one's keys
        assert torch.equal(quantized(tokens, caches[0]), bf16(tokens, caches[1]))


def test_quantize_int8_is_symmetric_per_output_channel():
    weight = torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [3.0, 1.5, -0.75]], dtype=torch.bfloat16)
    qweight, scales = quantize_int8(weight)
    assert qweight.dtype == torch.int8 and scales.dtype == torch.bfloat16
    assert qweight[0].tolist() == [64, -127, 32] and qweight[1].tolist() == [0, 0, 0]
    assert qweight[2].abs().max() == 127
    assert torch.allclose(qweight.float() * scales.float()[:, None], weight.float(), atol=0.02)


def test_int4_blocks_give_back_a_q4_1_weight():
    # A weight built as Q4_1 builds it (per block of 32: min + scale * q, q in 0..15 reaching both
    # ends) comes back block for block; a constant block is all zeros.
    torch.manual_seed(0)
    q = torch.randint(0, 16, (3, 2 * INT4_GROUP_SIZE), dtype=torch.int32)
    q[:, 0], q[:, 1], q[:, INT4_GROUP_SIZE], q[:, INT4_GROUP_SIZE + 1] = 0, 15, 15, 0
    scales, mins = torch.tensor([[0.01, 0.02], [0.5, 0.001], [0.03, 0.0]]), torch.tensor([[-0.1, 0.2], [-4.0, 0.0], [0.05, 1.5]])
    q[2, INT4_GROUP_SIZE:] = 0  # scale 0: a constant block
    weight = (q.float().reshape(3, 2, INT4_GROUP_SIZE) * scales[..., None] + mins[..., None]).reshape(3, -1)
    got_q, got_scales, got_mins = int4_blocks(weight)
    assert torch.equal(got_q, q)
    assert torch.allclose(got_scales, scales, atol=1e-6) and torch.allclose(got_mins, mins)
    with pytest.raises(ValueError, match="multiples of 32"):
        int4_blocks(torch.zeros(2, 48))
    with pytest.raises(ValueError, match="output sizes that are multiples of 16, not 20"):
        quantize_int4(torch.zeros(20, 64, dtype=torch.bfloat16))  # torch's packing would raise RuntimeError


@torch.no_grad()
def test_int4_blocks_are_the_bundled_gguf_blocks(slm_executor):
    # The bundled SmolLM2's decoder linears are Q4_1 in its GGUF: in fp32 the blocks give every
    # weight back exactly (measured over all 30 layers; two layers here), so int4wo's only
    # departure from the file is bf16 rounding of each block's scale and offset.
    for layer in (slm_executor.model.model.layers[0], slm_executor.model.model.layers[-1]):
        for linear in (layer.self_attn.q_proj, layer.self_attn.v_proj, layer.mlp.down_proj):
            weight = linear.weight
            q, scales, mins = int4_blocks(weight)
            groups = q.float().reshape(*scales.shape, INT4_GROUP_SIZE) * scales[..., None] + mins[..., None]
            assert torch.equal(groups.reshape(weight.shape), weight)


@torch.no_grad()
def test_the_int4_kernel_computes_the_blocks_weight():
    # The packed layout and the (q - 8) * scale + zero convention, against the plain matmul.
    torch.manual_seed(1)
    weight = (torch.randn(64, 128) * 0.05).to(torch.bfloat16)
    packed, scales_and_zeros = quantize_int4(weight)
    q, _, _ = int4_blocks(weight)
    scale, zero = (scales_and_zeros[..., i].T.float().repeat_interleave(INT4_GROUP_SIZE, 1) for i in (0, 1))
    dequantized = (q.float() - 8) * scale + zero
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    got = torch._weight_int4pack_mm_for_cpu(x, packed, INT4_GROUP_SIZE, scales_and_zeros)
    assert torch.allclose(got.float(), x.float() @ dequantized.T, atol=0.02)
    assert (dequantized - weight.float()).abs().max() < 0.02  # within a quantization step of the weight


def test_greedy_outputs_stay_within_the_stated_agreement(quantized_executor):
    quantization = quantized_executor.quantization
    min_identical, min_prefix, _ = BOUNDS[quantization]
    questions = [e.question for e in load_gsm8k("test", limit=20)]
    streams = {key: quantized_executor.submit(req) for key, req in cases(questions)}  # batched, as served
    results = {key: stream.wait() for key, stream in streams.items()}
    produced = {key: r.token_ids for key, r in results.items()}

    first, identical, prefix = greedy_agreement(produced)
    # the probe: fp32's recorded readings on the json cases
    deltas = [abs(results[k].confidence.expected - expected) for k, (position, expected) in READINGS.items()
              if results[k].confidence and results[k].confidence.position == position]
    print(f"{quantization}: first {first}/40, identical {identical}/40, prefix {prefix:.3f}, "
          f"readings compared {len(deltas)}, max delta {max(deltas, default=0):.4f}")
    assert first == len(REFERENCE)
    assert identical >= min_identical and prefix >= min_prefix, (identical, prefix)
    assert len(deltas) >= MIN_READINGS and max(deltas) <= READING_TOLERANCE, deltas


def test_a_quantized_step_stays_within_the_logit_tolerance(quantized_executor, slm_executor):
    worst = worst_step_deviation(quantized_executor, slm_executor)
    print(f"{quantized_executor.quantization}: logits max deviation {worst:.3f}")
    assert worst <= BOUNDS[quantized_executor.quantization][2], worst
