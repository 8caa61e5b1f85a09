"""CPU: the torch reference (what dispatch runs on CPU) against the plain torch composite.

    COREA_THREADS=1 pytest benchmarks/bench_confidence.py --benchmark-group-by=param:case \
        --benchmark-timer=time.process_time   # CPU time: the 2 shared cores are busy

Not part of `make test` (speed belongs here, not in tests). Each case first checks that the
composite and the reference agree, so the two timings are of the same function.
"""

from __future__ import annotations

import os

import pytest
import torch

from composite import confidence_stats_composite
from corea_kernels import confidence_stats_reference

torch.set_num_threads(int(os.environ.get("COREA_THREADS", "1")))

CASES = {
    "64x49152": (64, 49152),
    "64x49152+mask": (64, 49152),
    "256x152064": (256, 152064),
    "256x152064+mask": (256, 152064),
}
IMPLEMENTATIONS = {"reference": confidence_stats_reference, "composite": confidence_stats_composite}


def make_inputs(case: str):
    rows, vocab = CASES[case]
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(rows, vocab, generator=gen) * 4
    token_ids = torch.arange(15, 25)  # SmolLM2's digits 0..9
    values = torch.arange(10, dtype=torch.float32) / 10
    bitmask = None
    if case.endswith("+mask"):
        bitmask = torch.randint(-(2**31), 2**31 - 1, (rows, (vocab + 31) // 32), dtype=torch.int32, generator=gen)
    return logits, token_ids, values, bitmask


@pytest.fixture(scope="module")
def inputs():
    cache = {}

    def get(case):
        if case not in cache:
            cache.clear()  # the 256-row cases hold ~160 MB each
            cache[case] = make_inputs(case)
        return cache[case]

    return get


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_confidence_stats_cpu(benchmark, inputs, case, impl):
    args = inputs(case)
    reference = confidence_stats_reference(*args)
    result = IMPLEMENTATIONS[impl](*args)
    for name, got, want in zip(reference._fields, result, reference):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=lambda m: f"{impl} {name}: {m}")
    benchmark.extra_info["bytes_of_logits"] = args[0].numel() * args[0].element_size()
    benchmark.pedantic(IMPLEMENTATIONS[impl], args=args, rounds=5, iterations=1, warmup_rounds=1)
