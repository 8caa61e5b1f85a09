"""GPU: the Triton confidence kernel against a device-to-device copy and the torch composite.

    python benchmarks/gpu_confidence.py [--json results.json]

One command: compiles the kernel (Triton JIT), checks it against the torch reference on the GPU
(special rows, extreme logits, all dtypes, a persistent grid looping over rows), then times with
CUDA events, the L2 cache flushed before each call, for bf16 [256, 152064] with and without a
grammar bitmask:
  copy       logits.copy_() into another buffer: reads and writes the logits (2x bytes)
  kernel     confidence_stats_triton with its defaults, and the best of a few launch configs
  composite  plain torch (fp32 copy, log_softmax, gather, ...), see benchmarks/composite.py
  reference  kernels/reference.py on the GPU
It reports achieved bandwidth (bytes of logits + bitmask read) and % of the copy's bandwidth,
and the goals: kernel >= 80% of copy bandwidth and >= 3x faster than the composite.

Without CUDA it prints why and exits 0. `--cpu-dry-run` runs the same path on the CPU under
TRITON_INTERPRET=1 with tiny shapes (a check of the script itself; its times mean nothing).
Needs torch and triton; no repository install (kernels/ is loaded as corea_kernels if needed).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS, VOCAB = 256, 152064
LAUNCH_CONFIGS = [  # (block_v, num_warps, num_stages); the defaults for 16-bit logits come first
    (8192, 8, 3),
    (8192, 16, 3),
    (16384, 16, 3),
    (4096, 8, 3),
    (4096, 4, 2),
    (16384, 32, 2),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--vocab", type=int, default=VOCAB)
    parser.add_argument("--reps", type=int, default=50, help="timed calls per measurement (median)")
    parser.add_argument("--cpu-dry-run", action="store_true", help="exercise the script on CPU (interpreter)")
    return parser.parse_args()


def import_kernels():
    """corea_kernels, from the installed package or straight from this checkout's kernels/."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import corea_kernels  # noqa: F401
    except ImportError:
        spec = importlib.util.spec_from_file_location(
            "corea_kernels", ROOT / "kernels" / "__init__.py", submodule_search_locations=[str(ROOT / "kernels")]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["corea_kernels"] = module
        spec.loader.exec_module(module)
    import corea_kernels
    from composite import confidence_stats_composite
    from corea_kernels.confidence import confidence_stats_triton

    return corea_kernels, confidence_stats_triton, confidence_stats_composite


def make_inputs(torch, rows, vocab, dtype, device, *, masked, seed=0, special_rows=True):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=gen) * 4
    token_ids = torch.randperm(vocab, generator=gen)[:10]
    token_ids[-1] = vocab - 1
    values = torch.arange(10, dtype=torch.float32) / 10
    bitmask = None
    if special_rows and rows > 3:
        spots = torch.rand(vocab, generator=gen)
        logits[3, spots < 0.01] = 1e4  # extreme logits
        logits[3, spots > 0.99] = -1e4
        logits[3, token_ids[:3]] = 1e4 - 5.0
    if masked:
        bitmask = torch.randint(-(2**31), 2**31 - 1, (rows, (vocab + 31) // 32), dtype=torch.int32, generator=gen)
        if special_rows and rows > 2:
            bitmask[1] = 0  # no allowed token
            for token in token_ids.tolist():  # every confidence token masked in row 2
                word, bit = divmod(token, 32)
                value = (int(bitmask[2, word]) & 0xFFFFFFFF) & ~(1 << bit)
                bitmask[2, word] = value - 2**32 if value >= 2**31 else value
        bitmask = bitmask.to(device)
    return logits.to(dtype).to(device), token_ids.to(device), values.to(device), bitmask


def check(torch, kernels, triton_fn, composite_fn, device, shapes) -> list[str]:
    """Compare every output of the kernel (outputs poisoned first) with the reference."""
    from corea_kernels.confidence import allocate_outputs

    failures = []
    for rows, vocab, dtype, masked, launch in shapes:
        args = make_inputs(torch, rows, vocab, dtype, device, masked=masked, seed=rows + vocab)
        want = kernels.confidence_stats_reference(*args)
        out = allocate_outputs(rows, 10, device)
        for tensor in out[:-1]:
            tensor.fill_(float("nan"))
        out.argmax.fill_(-7)
        got = triton_fn(*args, out=out, **launch)
        failed_before = len(failures)
        label = f"{rows}x{vocab} {str(dtype).removeprefix('torch.')} mask={masked} {launch or 'defaults'}"
        for name in want._fields:
            g, w = getattr(got, name), getattr(want, name)
            if name == "argmax":
                ok = torch.equal(g, w)
            else:
                rtol = 2e-6 if name == "log_normalizer" else 1e-5
                ok = not torch.isnan(g).any() and torch.allclose(g, w, rtol=rtol, atol=2e-6)
            if not ok:
                failures.append(f"{label}: {name} differs (max abs diff {(g.float() - w.float()).abs().max():.3g})")
        composite = composite_fn(*args)
        if not torch.allclose(composite.expected, want.expected, atol=1e-4):
            failures.append(f"{label}: the composite baseline disagrees with the reference")
        print(f"  check {label}: {'ok' if len(failures) == failed_before else 'FAIL'}")
    return failures


def host_time_per_call(torch, fn, calls=200) -> float:
    """Seconds per call of fn back to back, host overhead included (what a decode loop sees)."""
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls


class Timer:
    """Median time of fn() over reps calls, each after flushing the L2 cache (CUDA events)."""

    def __init__(self, torch, device, reps):
        self.torch, self.device, self.reps = torch, device, reps
        self.cuda = device.type == "cuda"
        self.flush = torch.empty(256 * 2**20, dtype=torch.int8, device=device) if self.cuda else None

    def __call__(self, fn) -> float:
        torch = self.torch
        for _ in range(3):
            fn()
        if not self.cuda:
            times = []
            for _ in range(self.reps):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            return statistics.median(times)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.reps)]
        for start, end in zip(starts, ends):
            self.flush.zero_()
            # Keep the GPU busy (~0.2 ms) while Python enqueues fn's launches, so the events time
            # the GPU work and not the host's launch overhead.
            if hasattr(torch.cuda, "_sleep"):
                torch.cuda._sleep(400_000)
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) / 1e3


def measure(torch, kernels, triton_fn, composite_fn, device, rows, vocab, dtype, reps) -> list[dict]:
    timer = Timer(torch, device, reps)
    results = []
    for masked in (False, True):
        logits, token_ids, values, bitmask = make_inputs(
            torch, rows, vocab, dtype, device, masked=masked, special_rows=False
        )
        logits_bytes = logits.numel() * logits.element_size()
        read_bytes = logits_bytes + (bitmask.numel() * 4 if bitmask is not None else 0)
        copy_dst = torch.empty_like(logits)
        t_copy = timer(lambda: copy_dst.copy_(logits))
        copy_bw = 2 * logits_bytes / t_copy
        out = kernels.confidence.allocate_outputs(rows, token_ids.numel(), device)
        t_composite = timer(lambda: composite_fn(logits, token_ids, values, bitmask))
        t_reference = timer(lambda: kernels.confidence_stats_reference(logits, token_ids, values, bitmask))
        configs = {}
        for block_v, num_warps, num_stages in LAUNCH_CONFIGS:
            launch = dict(block_v=block_v, num_warps=num_warps, num_stages=num_stages)
            configs[(block_v, num_warps, num_stages)] = timer(
                lambda: triton_fn(logits, token_ids, values, bitmask, out=out, **launch)
            )
        t_default = timer(lambda: triton_fn(logits, token_ids, values, bitmask, out=out))
        t_host = host_time_per_call(torch, lambda: triton_fn(logits, token_ids, values, bitmask, out=out),
                                    calls=200 if device.type == "cuda" else 2)
        best_config, t_best = min(configs.items(), key=lambda item: item[1])
        for label, seconds in [("kernel (defaults)", t_default), (f"kernel best {best_config}", t_best)]:
            bandwidth = read_bytes / seconds
            results.append(
                dict(
                    case=f"{str(dtype).removeprefix('torch.')} [{rows}, {vocab}]" + (" +mask" if masked else ""),
                    what=label,
                    us=seconds * 1e6,
                    gb_s=bandwidth / 1e9,
                    pct_of_copy=100 * bandwidth / copy_bw,
                    x_vs_composite=t_composite / seconds,
                    x_vs_reference=t_reference / seconds,
                    copy_us=t_copy * 1e6,
                    copy_gb_s=copy_bw / 1e9,
                    composite_us=t_composite * 1e6,
                    reference_us=t_reference * 1e6,
                    host_us_per_call=t_host * 1e6,
                    all_configs_us={str(k): v * 1e6 for k, v in configs.items()},
                )
            )
    return results


def print_table(results: list[dict]) -> None:
    header = f"{'case':28} {'what':34} {'us':>8} {'GB/s':>8} {'% copy':>7} {'x comp':>7} {'x ref':>7}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['case']:28} {r['what']:34} {r['us']:8.1f} {r['gb_s']:8.0f} {r['pct_of_copy']:6.0f}% "
            f"{r['x_vs_composite']:7.1f} {r['x_vs_reference']:7.1f}"
        )
    print("baselines per case: copy us / GB/s (2x bytes), composite us, reference us")
    seen = set()
    for r in results:
        if r["case"] not in seen:
            seen.add(r["case"])
            print(
                f"  {r['case']:28} copy {r['copy_us']:.1f} us {r['copy_gb_s']:.0f} GB/s, "
                f"composite {r['composite_us']:.1f} us, reference {r['reference_us']:.1f} us, "
                f"kernel back to back incl. host overhead {r['host_us_per_call']:.1f} us/call"
            )
    for r in results:
        if r["what"] == "kernel (defaults)":
            bandwidth_goal = "MET" if r["pct_of_copy"] >= 80 else "MISSED"
            speed_goal = "MET" if r["x_vs_composite"] >= 3 else "MISSED"
            print(
                f"goal {r['case']}: >=80% of copy bandwidth {bandwidth_goal} ({r['pct_of_copy']:.0f}%), "
                f">=3x composite {speed_goal} ({r['x_vs_composite']:.1f}x)"
            )


def main() -> int:
    args = parse_args()
    if args.cpu_dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    if not args.cpu_dry_run and not torch.cuda.is_available():
        print("gpu_confidence: no CUDA device here; nothing measured (run it on a GPU machine).")
        return 0
    if importlib.util.find_spec("triton") is None:
        print("gpu_confidence: triton is not installed; nothing measured.")
        return 0
    kernels, triton_fn, composite_fn = import_kernels()
    device = torch.device("cpu" if args.cpu_dry_run else "cuda")
    rows, vocab, reps = (args.rows, args.vocab, args.reps)
    if args.cpu_dry_run:
        rows, vocab, reps = 4, 4099, 2
        del LAUNCH_CONFIGS[2:]
    else:
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {sys.modules['triton'].__version__}")

    print("checking the kernel against the reference ...")
    shapes = [(rows, vocab, torch.bfloat16, masked, {}) for masked in (False, True)]
    if not args.cpu_dry_run:
        shapes += [
            (64, 49152, torch.float32, True, {}),
            (64, 49152, torch.float16, True, {}),
            (3, 1000, torch.bfloat16, True, {}),
            (1100, 1000, torch.float32, True, dict(programs_per_sm=1)),  # programs loop over rows
        ]
        shapes += [(rows, vocab, torch.bfloat16, True, dict(block_v=b, num_warps=w, num_stages=s))
                   for b, w, s in LAUNCH_CONFIGS[1:]]
    failures = check(torch, kernels, triton_fn, composite_fn, device, shapes)
    if failures:
        print("kernel does NOT match the reference:\n  " + "\n  ".join(failures))
        return 1

    print(f"timing (median of {reps} calls, L2 flushed before each) ...")
    results = measure(torch, kernels, triton_fn, composite_fn, device, rows, vocab, torch.bfloat16, reps)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
