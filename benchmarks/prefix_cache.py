"""The shared-prefix KV cache on and off: the same constrained requests, the same weights.

    python benchmarks/prefix_cache.py [--n 20] [--threads 1] [--max-reasoning-chars 200]

Every request of a contract starts with the same system prompt (the format instructions). With
the cache (TorchExecutor's default) its KV is computed once and shared; without it
(`prefix_cache=False`) every prompt is prefilled whole. The N GSM8K questions are submitted
together in each mode, the modes taking turns; the table gives wall time, the part of it spent in
prefill, prompt tokens run through the model, and whether both modes decoded the same tokens.
"""

from __future__ import annotations

import argparse
import time

import torch


def run(executor, requests) -> tuple[float, list]:
    t0 = time.perf_counter()
    results = [s.wait() for s in [executor.submit(r) for r in requests]]
    return time.perf_counter() - t0, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="on/off pairs, interleaved (the load drifts)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-reasoning-chars", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from corea_engine.contract import build_messages, get_format
    from corea_engine.evaluation.datasets import load_gsm8k
    from corea_engine.runtime import Request
    from corea_engine.runtime.torch_executor import TorchExecutor

    fmt = get_format("json").bounded(max_reasoning_chars=args.max_reasoning_chars, max_answer_chars=24)
    questions = [e.question for e in load_gsm8k("test", limit=args.n)]

    def requests():
        return [Request(messages=build_messages(q, fmt), contract=fmt) for q in questions]

    cached = TorchExecutor(max_batch_size=args.n)
    plain = TorchExecutor(model_and_tokenizer=(cached.model, cached.tokenizer), max_batch_size=args.n, prefix_cache=False)
    cached.generate(requests()[0])  # warm-up; it also fills the cache, as a serving process would have
    plain.generate(requests()[0])
    totals = {"cache on": [0.0, 0.0, 0, 0], "cache off": [0.0, 0.0, 0, 0]}  # seconds, prefill s, tokens in, out
    tokens = {}
    for _ in range(args.rounds):
        for label, executor in (("cache on", cached), ("cache off", plain)):
            executor.stats.reset()
            seconds, results = run(executor, requests())
            row = totals[label]
            row[0] += seconds
            row[1] += executor.stats.prefill_s
            row[2] += executor.stats.prefill_tokens
            row[3] += sum(r.completion_tokens for r in results)
            tokens.setdefault(label, [r.token_ids for r in results])
    cached.close()
    plain.close()

    print(f"\n{args.n} GSM8K questions submitted together, json contract, greedy, {args.threads} thread(s), "
          f"{args.rounds} interleaved rounds per mode (sums)\n")
    print("| mode | seconds | of which prefill | prompt tokens prefilled | completion tokens |")
    print("|---|---|---|---|---|")
    for label, (seconds, prefill, prompt, completion) in totals.items():
        print(f"| {label} | {seconds:.1f} | {prefill:.1f} | {prompt} | {completion} |")
    same = sum(a == b for a, b in zip(tokens["cache on"], tokens["cache off"]))
    on, off = totals["cache on"], totals["cache off"]
    print(f"\nidentical token sequences: {same} of {args.n}; off / on: {off[0] / on[0]:.2f}x the time, "
          f"{off[1] / on[1]:.2f}x the prefill time")


if __name__ == "__main__":
    main()
