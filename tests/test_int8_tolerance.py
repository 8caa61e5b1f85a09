"""Weight-only int8 (quantization="int8wo", bf16 activations) against the fp32 reference.

The executor runs at most INT8_MAX_ROWS rows a step, so every step multiplies the int8 weights
(larger batches take the bf16 copy, which tests/test_bf16_tolerance.py bounds).
Stated bounds (measured 2026-11-30 on this CPU, batched as below: 40/40 first tokens, 18/40
outputs identical, 72% of reference tokens before the first difference on average, 13 json
readings at fp32's position with the expected confidence within 0.020; a step's logits within
0.57 of fp32. With the lm_head in int8 too: 13/40, 60%, 11 readings within 0.025, logits 0.89):
  - greedy, the 20-question set (free text + json contract, tests/data/greedy_reference.json):
    every first token equal, >= MIN_IDENTICAL of 40 outputs identical, >= MIN_PREFIX of reference
    tokens before the first difference on average;
  - one decode step: logits within LOGIT_TOLERANCE of fp32, same top-1 token;
  - the probe: where a json answer reaches its confidence at the same position as fp32 (at
    least MIN_READINGS of 20), the expected confidence within READING_TOLERANCE of fp32's
    (fp32's readings recorded in the same file: fp32 reads the same alone or batched).
A broken quantization fails (measured: every scale 10% off moves the logits 1.8-2.1 from fp32;
output channels shifted by one row change the top-1 token).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from corea_engine.evaluation.datasets import load_gsm8k
from corea_engine.runtime.dtypes import check_quantization
from corea_engine.runtime.executor import ExecutorError
from corea_engine.runtime.llama_forward import INT8_MAX_ROWS, LlamaDecodeStep, quantize_int8
from corea_engine.runtime.torch_executor import TorchExecutor
from tests.test_llama_forward import PROMPTS, _reference
from tests.tolerance import READINGS, REFERENCE, greedy_agreement, worst_step_deviation
from tests.tools.record_greedy_reference import cases

MIN_IDENTICAL, MIN_PREFIX, MIN_READINGS = 13, 0.6, 10
LOGIT_TOLERANCE = 0.9
READING_TOLERANCE = 0.06


@pytest.fixture(scope="module")
def int8_executor():
    executor = TorchExecutor(dtype="bfloat16", quantization="int8wo", max_batch_size=INT8_MAX_ROWS)
    yield executor
    executor.close()


def test_int8wo_needs_bf16_activations_on_the_cpu(slm_executor):
    assert check_quantization("int8wo", "bfloat16", "cpu") == "int8wo"
    with pytest.raises(ExecutorError, match="int8wo runs on bfloat16 activations, not float32"):
        TorchExecutor(model_and_tokenizer=(slm_executor.model, slm_executor.tokenizer), quantization="int8wo")
    with pytest.raises(ValueError, match="bfloat16 activations, not float32"):
        check_quantization("int8wo", "float32")
    with pytest.raises(ValueError, match="on the CPU, not cuda"):
        check_quantization("int8wo", "bfloat16", "cuda")
    with pytest.raises(ValueError, match="int4"):
        check_quantization("int4", "bfloat16")
    out = subprocess.run([sys.executable, "-m", "corea_engine.cli", "solve", "q", "--mode", "slm_only",
                          "--quantization", "int8wo", "--dtype", "float32"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "int8wo runs on bfloat16 activations" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_the_start_up_line_names_the_quantization(int8_executor, slm_executor):
    kernel = ", corea-cpu attention" if int8_executor._step.attention == "corea-cpu" else ""  # decode_attention.py
    assert int8_executor.runtime == "cpu, bfloat16, int8wo" + kernel  # every step multiplies int8
    assert slm_executor.runtime == "cpu, float32"


@torch.no_grad()
def test_an_int8_step_above_the_int8_rows_is_the_bf16_step(int8_executor):
    model = int8_executor.model
    linears = [part for layer in int8_executor._step.layers for part in layer if hasattr(part, "dense")]
    assert linears and all(linear.dense is None for linear in linears)  # no bf16 copy for nothing
    int8, bf16 = LlamaDecodeStep(model, "int8wo", max_rows=16), LlamaDecodeStep(model, "none")
    assert int8.weights == f"int8wo (<= {INT8_MAX_ROWS} rows)"
    prompts = [int8_executor.tokenizer.encode(p) for p in PROMPTS]
    prompts = [(_reference(model, ids, steps=0)[0], len(ids)) for ids in prompts]

    def cache(step, rows):  # the prompts in turn: rows of different lengths
        slots = step.new_cache(max_slots=rows, max_len=64)
        for row in range(rows):
            kv, n = prompts[row % len(prompts)]
            slots.admit(kv, 0, torch.arange(n))
        return slots

    tokens = torch.tensor([504, 1017, 28, 6248, 339])
    assert len(tokens) == INT8_MAX_ROWS + 1
    below = [step(tokens[:INT8_MAX_ROWS], cache(step, INT8_MAX_ROWS)) for step in (int8, bf16)]
    assert not torch.equal(*below)  # int8 up to INT8_MAX_ROWS rows
    caches = [cache(step, len(tokens)) for step in (int8, bf16)]
    for _ in range(2):  # the second step attends over the first one's keys
        assert torch.equal(int8(tokens, caches[0]), bf16(tokens, caches[1]))


def test_quantize_int8_is_symmetric_per_output_channel():
    weight = torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [3.0, 1.5, -0.75]], dtype=torch.bfloat16)
    qweight, scales = quantize_int8(weight)
    assert qweight.dtype == torch.int8 and scales.dtype == torch.bfloat16
    assert qweight[0].tolist() == [64, -127, 32] and qweight[1].tolist() == [0, 0, 0]
    assert qweight[2].abs().max() == 127
    assert torch.allclose(qweight.float() * scales.float()[:, None], weight.float(), atol=0.02)


def test_int8_greedy_outputs_stay_within_the_stated_agreement(int8_executor):
    assert (int8_executor.dtype, int8_executor.quantization) == ("bfloat16", "int8wo")
    questions = [e.question for e in load_gsm8k("test", limit=20)]
    streams = {key: int8_executor.submit(req) for key, req in cases(questions)}  # batched, as served
    results = {key: stream.wait() for key, stream in streams.items()}
    produced = {key: r.token_ids for key, r in results.items()}

    first, identical, prefix = greedy_agreement(produced)
    # the probe: fp32's recorded readings on the json cases
    deltas = [abs(results[k].confidence.expected - expected) for k, (position, expected) in READINGS.items()
              if results[k].confidence and results[k].confidence.position == position]
    print(f"int8wo: first {first}/40, identical {identical}/40, prefix {prefix:.3f}, "
          f"readings compared {len(deltas)}, max delta {max(deltas, default=0):.4f}")
    assert first == len(REFERENCE)
    assert identical >= MIN_IDENTICAL and prefix >= MIN_PREFIX, (identical, prefix)
    assert len(deltas) >= MIN_READINGS and max(deltas) <= READING_TOLERANCE, deltas


def test_an_int8_step_stays_within_the_logit_tolerance(int8_executor, slm_executor):
    worst = worst_step_deviation(int8_executor, slm_executor)
    print(f"int8wo: logits max deviation {worst:.3f}")
    assert worst <= LOGIT_TOLERANCE, worst
