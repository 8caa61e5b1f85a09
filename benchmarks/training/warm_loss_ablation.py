"""Which made run 11's warm start not collapse: the loss or the lower lr? (issue 17)

Run 10 fitted the reply target with the expected Brier of the sampled digit at lr 1e-4 and every
reply got one digit; run 11 fitted the Brier of the expected confidence at lr 5e-5 and it did not.
This replays run 11's warm start (same model, seed, questions and rollouts) with run 10's loss at
run 11's lr, for `--epochs` epochs, and prints per epoch the digit loss and two collapse measures
over the training replies: the mean probability of the most likely digit (1.0: one digit) and the
std of the expected confidence across replies (0.0: one value for every reply). Each epoch is its
own fit_digits call (a fresh optimizer): only the first replays run 11's exactly.

    python benchmarks/training/warm_loss_ablation.py --model /work/runs17/run7/checkpoints/step-15 --epochs 1
"""

from __future__ import annotations

import argparse
import json
import time


def collapse(model, tokenizer, examples, scale) -> dict:
    """Mean top-digit probability and the expected confidence's mean / std over `examples`, read by
    the runtime's own reader (corea_kernels.confidence_stats), renormalized over the scale."""
    import torch

    from corea_kernels import confidence_stats

    digits = torch.tensor(scale.token_ids(tokenizer))
    values = torch.tensor(scale.values, dtype=torch.float32)
    with torch.no_grad():
        logits = torch.cat([model(input_ids=torch.tensor([ids[:at]])).logits[:, -1].float() for ids, _, at, _ in examples])
    stats = confidence_stats(logits, digits, values)
    top = (stats.probs.max(-1).values / stats.mass).mean()
    return {"mean_top_digit_prob": float(top), "expected_mean": float(stats.expected.mean()),
            "expected_std": float(stats.expected.std(unbiased=False))}


def main() -> None:
    import torch

    from corea_engine.contract import get_format
    from corea_engine.training.grpo import freeze_below, load_trainable
    from corea_engine.training.tasks import training_problems
    from corea_engine.training.warm import confidence_targets, digit_examples, fit_digits, sample_rollouts

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--loss", default="sampled_brier", choices=["sampled_brier", "brier"])
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--questions", type=int, default=160)
    ap.add_argument("--samples", type=int, default=6)
    ap.add_argument("--seed", type=int, default=3, help="corea train's --seed (questions use seed + 1, as there)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="write the result as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    fmt = get_format("json")
    model, tokenizer, _ = load_trainable(args.model)
    freeze_below(model, 8)  # run 10's and 11's --train-layers
    problems = training_problems(args.questions, seed=args.seed + 1, task="graded")
    start = time.time()
    torch.manual_seed(args.seed)  # as warm_start does, so the rollouts are run 11's
    rollouts = sample_rollouts(model, tokenizer, problems, fmt, samples=args.samples, temperature=0.5, max_new_tokens=64)
    examples = digit_examples(tokenizer, rollouts, confidence_targets(rollouts, "reply"), fmt)
    result = {"settings": vars(args), "examples": len(examples), "before": collapse(model, tokenizer, examples, fmt.scale),
              "epochs": []}
    print(json.dumps(result["before"]), f"{len(examples)} examples, rollouts {time.time() - start:.0f} s", flush=True)
    for epoch in range(args.epochs):
        (history,) = fit_digits(model, tokenizer, examples, epochs=1, learning_rate=args.lr, loss=args.loss,
                                scale=fmt.scale, seed=args.seed + epoch)
        row = {**history, **collapse(model, tokenizer, examples, fmt.scale), "elapsed_s": time.time() - start}
        result["epochs"].append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
