"""Embedded runtime throughput, measured as ratios in one run on the same prompts.

  python benchmarks/bench_executor.py [--n 8] [--max-new-tokens 64] [--threads 2]

Rows:
  sequential   the N requests one after another through the TorchExecutor
  concurrent   the N requests submitted together (continuous batching)
  hf_generate  transformers `generate`, one static left-padded batch of N
and the same with the JSON contract (xgrammar masking every step; transformers gets xgrammar's
own HF logits processor). Tokens count real tokens only (up to and including end of sequence).
Grammar cost is the executor's time in bitmask fill/apply/accept over its decode-step time.
"""

from __future__ import annotations

import argparse
import time

import torch


def count_real(row: list[int], eos: set[int], pad: int) -> int:
    n = 0
    for token in row:
        n += 1
        if token in eos:
            break
    return n


def run_executor(executor, requests, concurrent: bool):
    t0 = time.perf_counter()
    if concurrent:
        results = [s.wait() for s in [executor.submit(r) for r in requests]]
    else:
        results = [executor.generate(r) for r in requests]
    elapsed = time.perf_counter() - t0
    return sum(r.completion_tokens for r in results), elapsed


def run_hf(model, tokenizer, messages_list, max_new_tokens, fmt=None, grammars=None):
    import xgrammar as xgr

    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages_list]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    kwargs = {}
    if fmt is not None:
        kwargs["logits_processor"] = [xgr.contrib.hf.LogitsProcessor(grammars.compiled(fmt))]
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, **kwargs)
    elapsed = time.perf_counter() - t0
    new = out[:, batch["input_ids"].shape[1]:].tolist()
    eos = {tokenizer.eos_token_id}
    return sum(count_real(row, eos, tokenizer.pad_token_id) for row in new), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from corea_engine.contract import build_messages, get_format
    from corea_engine.evaluation.datasets import load_gsm8k
    from corea_engine.runtime import Request, SamplingParams
    from corea_engine.runtime.torch_executor import TorchExecutor

    questions = [e.question for e in load_gsm8k("test", limit=args.n)]
    executor = TorchExecutor(dtype=args.dtype, max_batch_size=args.n)
    model, tokenizer = executor.model, executor.tokenizer
    fmt = get_format("json").bounded(max_reasoning_chars=200, max_answer_chars=24)
    budget = args.max_new_tokens

    def requests(contract):
        return [Request(messages=build_messages(q, contract), contract=contract,
                        sampling=SamplingParams(max_new_tokens=budget), stop_at_confidence=False)
                for q in questions]

    # Warm up allocator and kernels so the first measured row is not penalised.
    executor.generate(requests(None)[0])
    rows = {}
    for label, contract in (("free text", None), ("json contract", fmt)):
        rows[(label, "sequential")] = run_executor(executor, requests(contract), concurrent=False)
        executor.stats.reset()
        rows[(label, "concurrent")] = run_executor(executor, requests(contract), concurrent=True)
        if contract is not None:
            stats = executor.stats
            grammar_share = stats.grammar_s / stats.step_s
        messages = [build_messages(q, contract) for q in questions]
        rows[(label, "hf_generate")] = run_hf(model, tokenizer, messages, budget, contract, executor.grammars)
    executor.close()

    print(f"\n{args.n} GSM8K prompts, greedy, max {budget} new tokens, {args.dtype}, {args.threads} threads\n")
    print(f"| {'workload':<14} | {'mode':<12} | {'tokens':>6} | {'seconds':>7} | {'tok/s':>6} |")
    print(f"|{'-' * 16}|{'-' * 14}|{'-' * 8}|{'-' * 9}|{'-' * 8}|")
    for (label, mode), (tokens, seconds) in rows.items():
        print(f"| {label:<14} | {mode:<12} | {tokens:>6} | {seconds:>7.2f} | {tokens / seconds:>6.1f} |")
    print()
    for label in ("free text", "json contract"):
        tps = {mode: rows[(label, mode)][0] / rows[(label, mode)][1] for mode in ("sequential", "concurrent", "hf_generate")}
        print(f"{label}: concurrent / sequential = {tps['concurrent'] / tps['sequential']:.2f}x (goal >= 3x); "
              f"concurrent / hf_generate = {tps['concurrent'] / tps['hf_generate']:.2f}x (goal >= 0.9x)")
    print(f"grammar masking share of a decode step (json contract, batch {args.n}): {100 * grammar_share:.2f}% (goal <= 3%)")


if __name__ == "__main__":
    main()
