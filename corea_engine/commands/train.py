"""`corea train`: GRPO calibration training (COREA, RLCR or CoCA reward), then evaluation.

Writes into --output: model/ (safetensors, servable with `corea solve --model OUTPUT/model`),
checkpoints/ (step-N, and warm/ after a --warm-start), train_log.jsonl (one line per step),
eval_before.json / eval_after.json (held-out metrics and per-sample records) with
*_expected.jsonl / *_sampled.jsonl records for `corea calibrate --fit`, reward_curve.png, report.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..training.grpo import TrainSettings
from ..training.rewards import REWARD_PRESETS
from ..training.tasks import TASKS
from ..training.warm import TARGETS
from .common import default_threads


class _WithDefaults(argparse.HelpFormatter):
    """Help that shows each flag's default, where it has one (the measured settings live in TrainSettings)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help
        return f"{action.help} (default: %(default)s)"


def register(sub) -> None:
    p = sub.add_parser("train", help="GRPO calibration training (TRL) with the COREA confidence reward",
                       formatter_class=_WithDefaults)
    p.add_argument("--model", default=None, help="model to train: 'smollm2-135m' (default) or a local folder")
    p.add_argument("--output", required=True, help="folder for the trained model, logs and report")
    p.add_argument("--contract", default=None,
                   help="output format the model learns (json, tags, ...; default json, json_confidence_first for coca)")
    # Defaults: the settings measured to work on the embedded SLM (benchmarks/training/README.md).
    d = TrainSettings()
    p.add_argument("--steps", type=int, default=d.steps, help="GRPO optimizer steps")
    p.add_argument("--prompts-per-step", type=int, default=d.prompts_per_step, help="questions per step")
    p.add_argument("--num-generations", type=int, default=d.num_generations, help="completions per question (the GRPO group)")
    p.add_argument("--max-completion-length", type=int, default=d.max_completion_length,
                   help="tokens a rollout may write")
    p.add_argument("--max-minutes", type=float, default=None, help="stop training after this many minutes")
    p.add_argument("--lr", type=float, default=d.learning_rate, help="learning rate")
    p.add_argument("--temperature", type=float, default=d.temperature, help="rollout sampling temperature")
    p.add_argument("--beta", type=float, default=d.beta, help="KL penalty to the starting model (0: none)")
    p.add_argument("--train-layers", type=int, default=d.train_layers,
                   help="train only the top N transformer blocks; 0: all weights")
    p.add_argument("--save-every", type=int, default=d.save_every, help="also export the model every N steps")
    p.add_argument("--reward", default="corea", choices=list(REWARD_PRESETS),
                   help="corea (L1 to the group accuracy), rlcr (correct + Brier, arXiv 2507.16806) or coca "
                        "(confidence first, its own advantage, arXiv 2603.05881); --weights/--distance override it")
    p.add_argument("--distance", default=None, choices=["l1", "l2", "kl"], help="calibration reward distance")
    p.add_argument("--weights", default=None,
                   help="reward weights NAME=W,... over format, correctness, calibration, brier, rlcr")
    p.add_argument("--task", default=d.task, choices=list(TASKS),
                   help="arithmetic (sums/products of n-digit numbers) or graded (levels the starting model gets "
                        "right 10-90%% of the time)")
    p.add_argument("--warm-start", type=int, default=0,
                   help="before GRPO, train the confidence digit toward the model's own measured accuracy "
                        "(supervised) on this many training questions (0: none)")
    p.add_argument("--warm-target", default=d.warm_target, choices=list(TARGETS),
                   help="warm start's confidence target: the accuracy of the question's level (its kind, e.g. "
                        "2-digit sums), of the question itself over its rollouts (shrunk toward its level's), or "
                        "whether each reply is right (the Brier score of the expected confidence: it learns P(right | reply))")
    p.add_argument("--warm-samples", type=int, default=d.warm_samples, help="replies per warm-start question")
    p.add_argument("--warm-lr", type=float, default=d.warm_lr, help="warm start's learning rate")
    p.add_argument("--train-size", type=int, default=d.train_size, help="generated training questions")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the training questions and the sampling (the held-out splits are fixed)")
    p.add_argument("--eval", type=int, default=200, help="held-out questions to evaluate before and after (0: skip)")
    p.add_argument("--eval-only", action="store_true", help="only evaluate --model on the held-out split")
    p.add_argument("--split", default="test", choices=["test", "validation"],
                   help="held-out split to evaluate: test (reported) or validation (for picking a checkpoint)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..cli import CommandError
    from ..contract import get_format
    from ..training.rewards import parse_weights
    from ..training.tasks import TEST_SPLIT_MAX

    preset = REWARD_PRESETS[args.reward]
    if args.contract is None:
        args.contract = "json_confidence_first" if preset.segmented else "json"
    fmt = get_format(args.contract)  # refuse a bad contract before loading anything
    if preset.segmented and not fmt.confidence_first:
        raise CommandError(f"--reward {args.reward} needs a confidence-first contract, got {args.contract}")
    for name in ("steps", "prompts_per_step", "num_generations", "max_completion_length", "train_size"):
        if getattr(args, name) < 1:
            raise CommandError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.num_generations < 2:
        raise CommandError("--num-generations must be at least 2: GRPO compares completions within a group")
    if args.train_layers < 0:
        raise CommandError(f"--train-layers must be 0 (all) or more, got {args.train_layers}")
    if args.warm_start < 0:
        raise CommandError(f"--warm-start must be 0 (none) or more, got {args.warm_start}")
    if args.warm_samples < 1:
        raise CommandError(f"--warm-samples must be 1 or more, got {args.warm_samples}")
    if not args.warm_lr > 0:
        raise CommandError(f"--warm-lr must be above 0, got {args.warm_lr}")
    if args.save_every < 0:
        raise CommandError(f"--save-every must be 0 (never) or more, got {args.save_every}")
    if not 0 <= args.eval <= TEST_SPLIT_MAX:
        raise CommandError(f"--eval must be 0..{TEST_SPLIT_MAX}, got {args.eval}")
    if args.split == "validation" and not args.eval_only:
        raise CommandError("--split validation is for --eval-only (picking a checkpoint); training reports on test")
    try:
        weights = parse_weights(args.weights) if args.weights is not None else dict(preset.weights)
    except ValueError as err:
        raise CommandError(str(err)) from None

    import torch

    from ..models import resolve_model
    from ..training import evaluate, report
    from ..training.grpo import train
    from ..training.tasks import held_out_problems, validation_problems

    threads = default_threads()
    torch.set_num_threads(threads)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    split = validation_problems if args.split == "validation" else held_out_problems
    held_out = split(args.eval, task=args.task) if args.eval else []
    resolve_model(args.model)  # a missing model fails here, with exit code 2

    def evaluate_to(model, name: str) -> dict:
        samples = evaluate.run_samples(held_out, model=model, contract=args.contract, threads=threads)
        summary = evaluate.summarize(samples)
        (out / name).write_text(json.dumps({"summary": summary, "samples": evaluate.samples_as_dicts(samples)}, indent=1))
        for source in ("expected", "sampled"):  # records for `corea calibrate --fit`
            evaluate.write_records(samples, out / f"{Path(name).stem}_{source}.jsonl", source)
        print(f"{name}: accuracy {summary['accuracy']:.3f}  ECE sampled {summary['sampled']['ece']:.3f} "
              f"expected {summary['expected']['ece']:.3f}", flush=True)
        return summary

    if args.eval_only:
        if not held_out:
            raise CommandError("--eval-only needs --eval N with N > 0")
        evaluate_to(args.model, "eval.json")
        return 0

    before = evaluate_to(args.model, "eval_before.json") if held_out else None
    settings = TrainSettings(
        model=args.model, output_dir=str(out), contract=args.contract, steps=args.steps,
        prompts_per_step=args.prompts_per_step, num_generations=args.num_generations,
        max_completion_length=args.max_completion_length, learning_rate=args.lr, temperature=args.temperature,
        beta=args.beta, train_layers=args.train_layers or None, save_every=args.save_every or None,
        distance=args.distance or preset.distance, weights=weights, segmented=preset.segmented, task=args.task,
        warm_start=args.warm_start, warm_target=args.warm_target,
        warm_samples=args.warm_samples, warm_lr=args.warm_lr, train_size=args.train_size, seed=args.seed,
        threads=threads, progress=not args.no_progress, max_minutes=args.max_minutes,
    )
    model_dir = train(settings)
    print(f"saved {model_dir}", flush=True)
    report.plot_curve(settings.log_path, out / "reward_curve.png")
    if held_out:
        after = evaluate_to(str(model_dir), "eval_after.json")
        text = report.before_after_table(before, after) + "\n\n" + report.difficulty_table(before, after) + "\n"
        (out / "report.md").write_text(text)
        print(text)
    return 0
