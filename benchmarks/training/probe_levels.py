"""The starting model's accuracy on candidate levels: greedy (the runtime) and at the rollout temperature.

A level teaches GRPO something only when its groups hold right and wrong answers, and a
calibrated confidence has something to track only when the levels' accuracies differ; the
`graded` task keeps the candidates whose accuracy lies within about 0.1..0.9. Questions come
from their own seed (never the held-out streams), `--per-level` per candidate level.

    python benchmarks/training/probe_levels.py --per-level 8 --temperature 0.5
"""

from __future__ import annotations

import argparse
import random
import time
from collections import defaultdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-level", type=int, default=8, help="questions per candidate level")
    parser.add_argument("--temperature", type=float, default=0.5, help="rollout temperature")
    parser.add_argument("--samples", type=int, default=4, help="completions per question at the temperature")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    import torch

    from corea_engine.contract import get_format
    from corea_engine.training import evaluate
    from corea_engine.training.grpo import build_prompt, load_trainable, response_prefix
    from corea_engine.training.rewards import parse_completion
    from corea_engine.training.tasks import CANDIDATE_LEVELS, check_answer

    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    problems = [level.problem(rng, f"probe-{level.name}-{i}") for level in CANDIDATE_LEVELS for i in range(args.per_level)]

    started = time.perf_counter()
    greedy = defaultdict(list)
    for s in evaluate.run_samples(problems, threads=args.threads):
        greedy[s.difficulty].append(s.correct)
    greedy_s = time.perf_counter() - started

    model, tokenizer, _ = load_trainable(None)
    model.eval()
    tokenizer.padding_side = "left"
    fmt = get_format("json")
    prefix = response_prefix(fmt)
    sampled = defaultdict(list)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    for i in range(0, len(problems), 16):
        chunk = problems[i:i + 16]
        batch = tokenizer([build_prompt(tokenizer, p.question, fmt) for p in chunk], return_tensors="pt", padding=True,
                          add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=args.max_new_tokens, do_sample=True, temperature=args.temperature,
                                 top_p=1.0, num_return_sequences=args.samples, pad_token_id=tokenizer.pad_token_id)
        for j, row in enumerate(out):
            p = chunk[j // args.samples]
            parsed = parse_completion(tokenizer.decode(row[batch["input_ids"].shape[1]:], skip_special_tokens=True), fmt, prefix)
            sampled[p.difficulty].append(parsed is not None and check_answer(parsed.answer, p.answer))
    print(f"greedy {greedy_s:.0f} s, sampled {time.perf_counter() - started:.0f} s "
          f"({args.per_level} questions per level, {args.samples} samples at T={args.temperature})")
    print(f"| level | greedy right | right at T={args.temperature} |\n|---|---|---|")
    for level in CANDIDATE_LEVELS:
        g, s = greedy[level.name], sampled[level.name]
        print(f"| {level.name} | {sum(g) / len(g):.2f} | {sum(s) / len(s):.2f} |")


if __name__ == "__main__":
    main()
