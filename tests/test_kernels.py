"""The Triton confidence kernel against the torch reference, run by Triton's CPU interpreter.

Inputs are fresh each run (the seed is in every failure message). Outputs are poisoned with NaN
(argmax with -7, which no row can get) before each launch, and every element is compared with the
reference, so an element the kernel forgot to write fails. The interpreter costs ~20 ms per row
plus ~5 ms per tile, so big vocabularies run with few rows and B = 64 with a small vocabulary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

# Triton reads this when the kernel is decorated: set it before kernels/confidence.py is imported.
os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import corea_kernels  # noqa: E402
from corea_kernels import ConfidenceInputError, confidence_stats_reference  # noqa: E402
from corea_kernels.confidence import allocate_outputs, confidence_stats_triton  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ARGMAX_POISON = -7


@pytest.fixture
def seed() -> int:
    return int.from_bytes(os.urandom(4), "little")


def _random_bitmask(gen: torch.Generator, rows: int, vocab: int, density: torch.Tensor) -> torch.Tensor:
    """xgrammar layout: int32 [rows, ceil(V/32)], bit j of word w = token 32w + j allowed."""
    words = (vocab + 31) // 32
    allowed = torch.rand(rows, words * 32, generator=gen) < density.unsqueeze(1)
    weights = torch.ones(32, dtype=torch.int64) << torch.arange(32)
    packed = (allowed.view(rows, words, 32).long() * weights).sum(-1)
    # Words with bit 31 set are negative int32 values, as xgrammar stores them.
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def _set_bits(bitmask: torch.Tensor, row: int, token_ids: torch.Tensor, allowed: bool) -> None:
    for token in token_ids.tolist():
        word, bit = divmod(token, 32)
        value = int(bitmask[row, word]) & 0xFFFFFFFF
        value = value | (1 << bit) if allowed else value & ~(1 << bit)
        bitmask[row, word] = value - 2**32 if value >= 2**31 else value


def make_case(seed: int, rows: int, vocab: int, dtype: torch.dtype, *, masked: bool, num_conf: int = 10,
              scale: float = 4.0, extreme: bool = False):
    """Random logits [rows, vocab] with the special rows the definition cares about.

    With a mask: row 0 has every confidence token masked, row 1 no allowed token at all, row 2
    only the confidence tokens allowed; the rest have densities from 1% to 99%.
    extreme: entries at +-1e4 (and -inf) and a spread of 1e3 in the rest.
    """
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=gen) * (1e3 if extreme else scale)
    num_conf = min(num_conf, vocab)
    token_ids = torch.randperm(vocab, generator=gen)[:num_conf]
    if vocab > 40:  # a confidence token in the last, partial bitmask word
        token_ids[-1] = vocab - 1
    values = torch.rand(num_conf, generator=gen) * 2 - 0.5
    if extreme:
        spots = torch.rand(rows, vocab, generator=gen)
        logits[spots < 0.01] = 1e4
        logits[spots > 0.99] = -1e4
        logits[(spots > 0.5) & (spots < 0.502)] = float("-inf")
        logits[:, token_ids[: num_conf // 2]] = 1e4 - torch.rand(rows, num_conf // 2, generator=gen) * 30
    logits = logits.to(dtype)
    if not masked:
        return logits, token_ids, values, None
    density = torch.rand(rows, generator=gen) * 0.98 + 0.01
    bitmask = _random_bitmask(gen, rows, vocab, density)
    if rows > 0:
        _set_bits(bitmask, 0, token_ids, allowed=False)
    if rows > 1:
        bitmask[1] = 0
    if rows > 2:
        bitmask[2] = 0
        _set_bits(bitmask, 2, token_ids, allowed=True)
    return logits, token_ids, values, bitmask


def run_triton_poisoned(logits, token_ids, values, bitmask, **launch):
    out = allocate_outputs(logits.shape[0], token_ids.numel(), logits.device)
    for tensor in out[:-1]:
        tensor.fill_(float("nan"))
    out.argmax.fill_(ARGMAX_POISON)
    result = confidence_stats_triton(logits, token_ids, values, bitmask, out=out, **launch)
    assert all(a is b for a, b in zip(result, out)), "the kernel must write into the given outputs"
    return result


def assert_matches_reference(got, logits, token_ids, values, bitmask, context: str) -> None:
    want = confidence_stats_reference(logits, token_ids, values, bitmask)
    for name in ("log_normalizer", "probs", "mass", "expected", "entropy"):
        g, w = getattr(got, name), getattr(want, name)
        assert not torch.isnan(g).any(), f"{name} has unwritten (NaN) elements; {context}"
        # The normaliser of logits near 1e4 carries fp32 rounding of ~1e-3 in absolute terms.
        rtol = 2e-6 if name == "log_normalizer" else 1e-5
        torch.testing.assert_close(g, w, rtol=rtol, atol=2e-6, msg=lambda m: f"{name}: {m}; {context}")
    assert (got.argmax != ARGMAX_POISON).all(), f"argmax has unwritten elements; {context}"
    assert torch.equal(got.argmax, want.argmax), f"argmax {got.argmax} != {want.argmax}; {context}"


# (rows, vocab): big vocabularies with few rows, B = 64 with a small, odd vocabulary.
SHAPES = [(1, 152064), (4, 152064), (3, 49152), (16, 49152), (64, 1000), (5, 4099), (4, 33), (3, 7)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("rows,vocab", SHAPES)
@pytest.mark.parametrize("masked", [True, False], ids=["mask", "nomask"])
def test_triton_matches_reference(seed, dtype, rows, vocab, masked):
    logits, token_ids, values, bitmask = make_case(seed, rows, vocab, dtype, masked=masked)
    before = logits.clone()
    got = run_triton_poisoned(logits, token_ids, values, bitmask)
    assert torch.equal(logits, before), "the kernel must not write the logits"
    assert_matches_reference(got, logits, token_ids, values, bitmask, f"seed={seed} {dtype} {rows}x{vocab}")
    if masked:
        assert (got.argmax[0] == -1) and (got.mass[0] == 0) and (got.entropy[0] == 0) and (got.expected[0] == 0)
        if rows > 1:
            assert got.log_normalizer[1] == float("-inf") and (got.probs[1] == 0).all()
        if rows > 2:
            assert torch.allclose(got.mass[2], torch.tensor(1.0), atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("rows,vocab", [(2, 152064), (8, 3001)])
def test_extreme_logits(seed, dtype, rows, vocab):
    logits, token_ids, values, bitmask = make_case(seed, rows, vocab, dtype, masked=True, extreme=True)
    got = run_triton_poisoned(logits, token_ids, values, bitmask)
    assert_matches_reference(got, logits, token_ids, values, bitmask, f"seed={seed} extreme {dtype}")
    logits, token_ids, values, _ = make_case(seed + 1, rows, vocab, dtype, masked=False, extreme=True)
    got = run_triton_poisoned(logits, token_ids, values, None)
    assert_matches_reference(got, logits, token_ids, values, None, f"seed={seed + 1} extreme {dtype} nomask")


@pytest.mark.parametrize("block_v", [32, 1024, 65536])
def test_block_sizes_and_persistent_grid(seed, block_v):
    # 3 programs for 7 rows: each program loops over rows; tiles from one word to wider than V.
    logits, token_ids, values, bitmask = make_case(seed, 7, 3000, torch.float32, masked=True, num_conf=17)
    got = run_triton_poisoned(logits, token_ids, values, bitmask, block_v=block_v, max_programs=3)
    assert_matches_reference(got, logits, token_ids, values, bitmask, f"seed={seed} block_v={block_v}")


def test_strided_rows_and_wide_bitmask(seed):
    # The last position of [B, T, V] (rows T*V apart) and a bitmask with spare words, as a padded
    # xgrammar allocation has.
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(4, 3, 2050, generator=gen)
    logits = hidden[:, -1, :]
    bitmask = torch.randint(-(2**31), 2**31 - 1, (4, 70), dtype=torch.int32, generator=gen)
    token_ids = torch.tensor([5, 2049, 64, 63], dtype=torch.int32)  # int32 ids, float64 values
    values = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    got = run_triton_poisoned(logits, token_ids, values, bitmask)
    assert_matches_reference(got, logits, token_ids, values, bitmask, f"seed={seed} strided")


def test_empty_batch():
    logits, token_ids, values = torch.randn(0, 100), torch.tensor([1, 2]), torch.tensor([0.5, 1.0])
    for backend in (confidence_stats_reference, confidence_stats_triton):
        stats = backend(logits, token_ids, values, torch.zeros(0, 4, dtype=torch.int32))
        assert stats.probs.shape == (0, 2) and stats.argmax.shape == (0,)


def test_digit_scale_one_allowed_token(seed):
    # The real scale: digits 0..9 worth 0.0..0.9; a row where the grammar allows one digit only
    # has all its mass there, entropy 0 and that digit's value.
    logits, _, _, _ = make_case(seed, 2, 49152, torch.bfloat16, masked=False)
    token_ids = torch.arange(15, 25)
    values = torch.arange(10, dtype=torch.float32) / 10
    bitmask = torch.zeros(2, 49152 // 32, dtype=torch.int32)
    _set_bits(bitmask, 0, torch.tensor([22]), allowed=True)
    bitmask[1] = -1
    got = run_triton_poisoned(logits, token_ids, values, bitmask)
    assert_matches_reference(got, logits, token_ids, values, bitmask, f"seed={seed} digits")
    assert got.argmax[0] == 7 and got.entropy[0] == 0
    assert torch.allclose(got.expected[0], torch.tensor(0.7)) and torch.allclose(got.mass[0], torch.tensor(1.0))


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 4),
    vocab=st.integers(1, 200),
    num_conf=st.integers(1, 12),
    dtype=st.sampled_from(DTYPES),
    masked=st.booleans(),
    case_seed=st.integers(0, 2**31 - 1),
)
def test_triton_matches_reference_small_shapes(rows, vocab, num_conf, dtype, masked, case_seed):
    logits, token_ids, values, bitmask = make_case(case_seed, rows, vocab, dtype, masked=masked, num_conf=num_conf)
    got = run_triton_poisoned(logits, token_ids, values, bitmask, block_v=64)
    assert_matches_reference(got, logits, token_ids, values, bitmask, f"seed={case_seed} {dtype} {rows}x{vocab}")


def test_dispatch_uses_reference_on_cpu(seed):
    logits, token_ids, values, bitmask = make_case(seed, 3, 4099, torch.float32, masked=True)
    assert corea_kernels.backend_for(logits) == "reference"
    got = corea_kernels.confidence_stats(logits, token_ids, values, bitmask)
    want = confidence_stats_reference(logits, token_ids, values, bitmask)
    for name, g, w in zip(want._fields, got, want):
        assert torch.equal(g, w), f"{name} differs from the reference; seed={seed}"


@pytest.mark.parametrize("backend", [confidence_stats_reference, confidence_stats_triton], ids=["reference", "triton"])
@pytest.mark.parametrize(
    "change,word",
    [
        (lambda a: {**a, "logits": a["logits"][0]}, "logits"),
        (lambda a: {**a, "logits": a["logits"].long()}, "logits dtype"),
        (lambda a: {**a, "values": a["values"][:3]}, "values"),
        (lambda a: {**a, "token_ids": a["token_ids"].float()}, "token_ids"),
        (lambda a: {**a, "token_ids": a["token_ids"] + 100}, "token_ids"),
        (lambda a: {**a, "bitmask": a["bitmask"].long()}, "bitmask"),
        (lambda a: {**a, "bitmask": a["bitmask"][:, :2]}, "bitmask"),
        (lambda a: {**a, "bitmask": a["bitmask"][:1]}, "bitmask"),
    ],
    ids=["1d-logits", "int-logits", "short-values", "float-ids", "ids-out-of-range", "int64-mask",
         "short-mask", "mask-rows"],
)
def test_bad_inputs_raise_typed_errors(backend, change, word):
    args = dict(
        logits=torch.randn(2, 100),
        token_ids=torch.tensor([1, 2, 3, 4]),
        values=torch.tensor([0.1, 0.2, 0.3, 0.4]),
        bitmask=torch.full((2, 4), -1, dtype=torch.int32),
    )
    with pytest.raises(ConfidenceInputError, match=word):
        backend(**change(args))


HOPPER_BUILDS = [("bf16", True, 8192), ("bf16", False, 8192), ("fp16", True, 8192), ("fp32", True, 4096)]


def test_compiles_for_hopper_without_spills():
    # The interpreter never runs Triton's compiler; this builds the real sm_90 cubins (no GPU
    # needed) at the default launch shapes, in one process without TRITON_INTERPRET.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    script = (
        "import json\nfrom corea_kernels.aot import compile_kernel\n"
        f"for dtype, mask, block_v in {HOPPER_BUILDS!r}:\n"
        "    print(json.dumps(compile_kernel(90, dtype, mask, block_v, 8, 3)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    builds = [json.loads(line) for line in done.stdout.strip().splitlines()]
    assert len(builds) == len(HOPPER_BUILDS)
    for usage in builds:
        assert usage["local_bytes"] == 0 and usage["stack_bytes"] == 0, f"register spills: {usage}"
        # 256 threads x <= 128 registers: two programs fit on an SM, which the B = 256 grid relies on.
        assert usage["registers"] <= 128, usage
        assert usage["vector_loads_16B"] >= 4, f"logits loads are not vectorised: {usage}"
