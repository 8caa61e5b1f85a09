"""What GRPO's rollouts look like before training: format rate, accuracy and stated confidence by level.

GRPO learns only from differences inside a group, so the rollout temperature decides whether a
group on an easy question holds both right and wrong answers, and whether the stated confidence
varies at all. This samples the training prompts (grammar-free, as `corea train` does) with HF
generate at each temperature and prints one table per temperature.

    python benchmarks/training/probe_rollouts.py --temperatures 0.3 0.6 1.0
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.3, 0.6, 1.0])
    parser.add_argument("--questions", type=int, default=32, help="training questions (levels take turns)")
    parser.add_argument("--samples", type=int, default=4, help="completions per question (a GRPO group)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from corea_engine.contract import get_format
    from corea_engine.training.grpo import build_prompt, load_trainable, response_prefix
    from corea_engine.training.rewards import parse_completion
    from corea_engine.training.tasks import check_answer, training_problems

    torch.set_num_threads(args.threads)
    model, tokenizer, _ = load_trainable(None)
    model.eval()
    tokenizer.padding_side = "left"
    fmt = get_format("json")
    prefix = response_prefix(fmt)
    problems = training_problems(args.questions, seed=1)
    batch = tokenizer([build_prompt(tokenizer, p.question, fmt) for p in problems], return_tensors="pt",
                      padding=True, add_special_tokens=False)
    for temperature in args.temperatures:
        torch.manual_seed(0)
        started = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=args.max_new_tokens, do_sample=True, temperature=temperature,
                                 top_p=1.0, num_return_sequences=args.samples, pad_token_id=tokenizer.pad_token_id)
        counts = defaultdict(lambda: {"n": 0, "parsed": 0, "right": 0, "confidence": 0.0})
        for i, row in enumerate(out):
            problem = problems[i // args.samples]
            parsed = parse_completion(tokenizer.decode(row[batch["input_ids"].shape[1]:], skip_special_tokens=True),
                                      fmt, prefix)
            c = counts[problem.difficulty]
            c["n"] += 1
            if parsed is not None:
                c["parsed"] += 1
                c["right"] += check_answer(parsed.answer, problem.answer)
                c["confidence"] += parsed.confidence
        print(f"\ntemperature {temperature} ({time.perf_counter() - started:.0f} s)")
        print("| level | samples | parses | right | mean stated confidence |\n|---|---|---|---|---|")
        for level, c in sorted(counts.items()):
            conf = c["confidence"] / c["parsed"] if c["parsed"] else float("nan")
            print(f"| {level} | {c['n']} | {c['parsed'] / c['n']:.2f} | {c['right'] / c['n']:.2f} | {conf:.2f} |")


if __name__ == "__main__":
    main()
