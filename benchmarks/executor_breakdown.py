"""Where the TorchExecutor's time goes at c concurrent requests: prefill, the decode step's forward,
and the per-step work around it (StepStats).

    python benchmarks/executor_breakdown.py [--dtype bfloat16] [--quantization int4wo] [--concurrency 8,32]
        [--threads 1] [--max-new-tokens 64] [--cprofile 30]

The workload is bench_executor.py's (imported from it): the first c GSM8K test questions
submitted together, greedy, free text and the bounded JSON contract; a failed request stops the run. For each it prints wall time; the share spent
prefilling joiners (prompt tokens, padding positions run beside them, forward passes); decode steps
and the ms of one step: its forward, and the rest (grammar: bitmask fill/apply/accept; Sequence:
each row's Sequence.step; confidence: the probe; sample: argmax or sampling; these four also count
the first token of each prefill pass, so "forward" = step minus them is a slight underestimate). --cprofile N
profiles the engine thread over the measured runs and prints its N most expensive functions.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats

import torch
from bench_executor import json_contract, run_executor, workload_messages

from corea_engine.runtime.dtypes import DTYPES, QUANTIZATIONS, check_quantization, resolve_dtype


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    parser.add_argument("--quantization", default="none", choices=QUANTIZATIONS,
                        help="weight-only quantization of the decode step (bfloat16 activations)")
    parser.add_argument("--concurrency", default="8,32", help="comma-separated concurrent requests")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--cprofile", type=int, default=0, help="print the engine thread's N top functions")
    args = parser.parse_args()
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    if not levels or min(levels) < 1 or args.max_new_tokens < 1:
        parser.error("--concurrency needs counts >= 1 and --max-new-tokens must be >= 1")
    args.dtype = resolve_dtype(args.dtype)
    try:  # the executor's own rule, before the model loads
        check_quantization(args.quantization, args.dtype)
    except ValueError as err:
        parser.error(f"--quantization: {err}")
    torch.set_num_threads(args.threads)

    from corea_engine.evaluation.datasets import load_gsm8k
    from corea_engine.runtime import Request, SamplingParams
    from corea_engine.runtime import torch_executor

    profile = cProfile.Profile() if args.cprofile else None
    engine_loop = torch_executor.TorchExecutor._engine_loop

    def profiled_loop(self):  # the engine thread's own profile: cProfile follows one thread
        profile.enable()
        try:
            engine_loop(self)
        finally:
            profile.disable()

    if profile is not None:
        torch_executor.TorchExecutor._engine_loop = profiled_loop
    workloads = workload_messages([e.question for e in load_gsm8k("test", limit=max(levels))], json_contract())
    executor = torch_executor.TorchExecutor(dtype=args.dtype, quantization=args.quantization,
                                            max_batch_size=max(levels), threads=args.threads)

    def run(count, workload, budget):  # (tokens, wall s); a failed request raises (run_executor)
        contract, messages = workloads[workload]
        requests = [Request(messages=m, contract=contract, sampling=SamplingParams(max_new_tokens=budget),
                            stop_at_confidence=False) for m in messages[:count]]
        tokens, wall, _, _ = run_executor(executor, requests, concurrent=True)
        return tokens, wall

    try:
        for workload in workloads:  # unmeasured: grammar compiled, kernels warm at every batch size
            for c in levels:
                run(c, workload, 2)
        if profile is not None:
            profile.clear()  # from here on: the measured runs only
        quantized = f"+{args.quantization}" if args.quantization != "none" else ""
        print(f"{args.dtype}{quantized}, {args.threads} thread(s), {args.max_new_tokens} new tokens, greedy")
        print("| workload | c | tok/s | wall s | prefill s (share) | prompt tokens + padding, passes | steps | "
              "ms/step | forward | grammar | Sequence | confidence | sample |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for label in workloads:
            for c in levels:
                tokens, wall = run(c, label, args.max_new_tokens)
                s = executor.stats
                steps = max(1, s.decode_steps)
                around = s.grammar_s + s.sequence_s + s.confidence_s + s.sample_s  # of the decode steps and the first tokens
                print(f"| {label} | {c} | {tokens / wall:.1f} | {wall:.2f} | {s.prefill_s:.2f} ({s.prefill_s / wall:.0%}) | "
                      f"{s.prefill_tokens} + {s.prefill_padding}, {s.prefill_chunks} | {s.decode_steps} | "
                      f"{1e3 * s.step_s / steps:.1f} | {1e3 * (s.step_s - around) / steps:.1f} | "
                      f"{1e3 * s.grammar_s / steps:.2f} | {1e3 * s.sequence_s / steps:.2f} | {1e3 * s.confidence_s / steps:.2f} | "
                      f"{1e3 * s.sample_s / steps:.2f} |", flush=True)
    finally:
        executor.close()
    if profile is not None:
        print()
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.cprofile)


if __name__ == "__main__":
    main()
