"""Can the model's own state tell its right answers from its wrong ones? A linear probe, before training.

The model answers graded training questions at the rollout temperature (several replies each);
at the position that predicts the confidence digit we take the last hidden state, and a logistic
regression (scikit-learn) learns "this reply is right" from it, cross-fitted by question (no
question is scored by a probe that saw it). Reported next to two references on the same replies:
the model's own expected confidence, and a confidence that knows only the level (its accuracy in
the other folds). AUROC within a level is the part a level lookup cannot give (issue 17: the
0.85 target needs it). A probe on one layer's state is a floor for what fine-tuning the top blocks
can learn, not a ceiling.

    python benchmarks/training/probe_hidden.py --model /work/runs17/run8/model --questions 160 --samples 6
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import defaultdict


def _auroc(scores, labels) -> float:
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(labels, scores) if 0 < sum(labels) < len(labels) else math.nan


def within_level_auroc(scores, labels, levels) -> float:
    """Mean AUROC over levels that hold both right and wrong replies, weighted by their pair counts."""
    groups = defaultdict(list)
    for s, y, lv in zip(scores, labels, levels):
        groups[lv].append((s, y))
    total = weight = 0.0
    for rows in groups.values():
        pos = sum(y for _, y in rows)
        pairs = pos * (len(rows) - pos)
        if pairs:
            total += pairs * _auroc([s for s, _ in rows], [y for _, y in rows])
            weight += pairs
    return total / weight if weight else math.nan


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="'smollm2-135m' (default) or a trained folder")
    p.add_argument("--questions", type=int, default=160)
    p.add_argument("--samples", type=int, default=6, help="replies per question")
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--layers", default="-1,-5,-9", help="hidden-state layers to probe (negative: from the top)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=11, help="training-stream seed (never a held-out question)")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args()

    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from corea_engine.contract import SCALE
    from corea_engine.training.grpo import load_trainable
    from corea_engine.training.tasks import training_problems
    from corea_engine.training.warm import digit_examples, sample_rollouts

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, tokenizer, _ = load_trainable(args.model)
    model.eval()
    problems = training_problems(args.questions, seed=args.seed, task="graded")
    t0 = time.time()
    rollouts = sample_rollouts(model, tokenizer, problems, "json", samples=args.samples, temperature=args.temperature)
    t_roll = time.time() - t0
    parsed = [r for r in rollouts if r.reasoning is not None]
    # digit_examples drops a reply whose digit merges with a neighbour: one at a time keeps them aligned
    kept, feats, expected = [], defaultdict(list), []
    digit_ids = SCALE.token_ids(tokenizer)
    values = torch.tensor(SCALE.values, dtype=torch.float32)
    layers = [int(x) for x in args.layers.split(",")]
    with torch.no_grad():
        for r in parsed:
            ex = digit_examples(tokenizer, [r], [0.5], "json")
            if not ex:
                continue
            ids, _, digit, _ = ex[0]
            out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
            at = digit - 1
            for layer in layers:
                feats[layer].append(out.hidden_states[layer][0, at].numpy())
            probs = out.logits[0, at, digit_ids].softmax(-1)
            expected.append(float(probs @ values))
            kept.append(r)
    labels = np.array([int(r.correct) for r in kept])
    levels = [r.problem.difficulty for r in kept]
    groups = [r.problem.id for r in kept]
    folds = list(GroupKFold(n_splits=5).split(np.zeros(len(kept)), labels, groups))

    level_score = np.zeros(len(kept))
    for train, test in folds:
        acc = defaultdict(list)
        for i in train:
            acc[levels[i]].append(labels[i])
        base = labels[train].mean()
        for i in test:
            level_score[i] = np.mean(acc[levels[i]]) if acc[levels[i]] else base

    result = {
        "model": args.model or "smollm2-135m", "questions": args.questions, "samples": args.samples,
        "replies": len(kept), "accuracy": float(labels.mean()), "rollout_s": round(t_roll, 1),
        "rows": {},
    }

    def row(name, scores):
        result["rows"][name] = {"auroc": round(_auroc(list(scores), list(labels)), 3),
                                "auroc_within_level": round(within_level_auroc(list(scores), list(labels), levels), 3)}

    row("expected confidence (the model's own)", expected)
    row("level accuracy (cross-fitted)", level_score)
    for layer in layers:
        x = np.stack(feats[layer])
        score = np.zeros(len(kept))
        for train, test in folds:
            clf = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=8, max_iter=2000, scoring="neg_log_loss"))
            clf.fit(x[train], labels[train])
            score[test] = clf.predict_proba(x[test])[:, 1]
        row(f"linear probe, hidden state {layer}", score)
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
