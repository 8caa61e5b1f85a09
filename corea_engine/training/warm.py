"""Warm start by supervised calibration: teach the confidence digit the model's own accuracy.

The model answers training questions at the rollout temperature (its own rollouts, grammar-free,
as GRPO samples them); each parsed reply keeps its reasoning and answer, and its confidence is
trained toward one of three targets:

* ``level``: the empirical accuracy of its level; ``question``: of its question, shrunk toward its
  level's (a question has only a few samples). Both by the cross-entropy of the digit the target
  rounds to.
* ``reply``: whether this reply is right (1 or 0), by the Brier score of the expected confidence
  (the one the runtime serves), (sum_d p(d) d/10 - y)^2. A proper score: its optimum is an expected
  confidence equal to P(right | question, reply), so the digit can learn what the written answer
  tells (a slip, a carry) and not only the level. Cross-entropy on 0/1 targets would teach "0.0"
  and "0.9" only; the expected Brier of the sampled digit, sum_d p(d) (d/10 - y)^2 (run 10), is
  linear in p, so its optimum is a single digit (run 10 stated the same digit for every reply).

A KL anchor holds the rest: on the reply's other tokens the model's next-token distribution is
held to the starting model's, so the answers stay as they were (without it, one run's greedy
accuracy fell from 0.39 to 0.29 while only the digit was trained: the top blocks are shared by
every token). Supervised calibration is reported for Qwen3-4B to lift AUROC where GRPO alone made
confidence worse (issue 17).
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from dataclasses import dataclass

from ..contract import SCALE, ConfidenceScale, Format, get_format
from .rewards import parse_completion
from .tasks import Problem, check_answer

log = logging.getLogger(__name__)

TARGETS = ("level", "question", "reply")
LOSSES = {"level": "cross_entropy", "question": "cross_entropy", "reply": "brier"}
SHRINK = 4.0  # pseudo-samples of the level's accuracy added to a question's own (target="question")


@dataclass
class Rollout:
    problem: Problem
    completion: str  # text after the prompt (the response prefix excluded)
    reasoning: str | None  # None when the reply does not parse
    answer: str | None
    correct: bool


def sample_rollouts(model, tokenizer, problems: list[Problem], fmt: Format | str, *, samples: int = 4,
                    temperature: float = 0.5, max_new_tokens: int = 64, batch_questions: int = 16) -> list[Rollout]:
    """`samples` completions per problem from HF generate at `temperature` (what GRPO's rollouts see)."""
    import torch

    from .grpo import build_prompt, response_prefix

    fmt = get_format(fmt)
    prefix = response_prefix(fmt)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    out: list[Rollout] = []
    try:
        for i in range(0, len(problems), batch_questions):
            chunk = problems[i:i + batch_questions]
            batch = tokenizer([build_prompt(tokenizer, p.question, fmt) for p in chunk], return_tensors="pt",
                              padding=True, add_special_tokens=False)
            with torch.no_grad():
                ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                                     top_p=1.0, num_return_sequences=samples, pad_token_id=tokenizer.pad_token_id)
            for j, row in enumerate(ids):
                p = chunk[j // samples]
                text = tokenizer.decode(row[batch["input_ids"].shape[1]:], skip_special_tokens=True)
                parsed = parse_completion(text, fmt, prefix)
                out.append(Rollout(p, text, parsed.reasoning if parsed else None, parsed.answer if parsed else None,
                                   parsed is not None and check_answer(parsed.answer, p.answer)))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def confidence_targets(rollouts: list[Rollout], target: str = "level") -> list[float]:
    """Per rollout: the accuracy it should state (its level's, its question's shrunk toward it, or
    its own correctness, 1.0 / 0.0)."""
    if target not in TARGETS:
        raise ValueError(f"unknown warm-start target {target!r}; choose one of: {', '.join(TARGETS)}")
    if target == "reply":
        return [float(r.correct) for r in rollouts]
    level: dict[str, list[int]] = defaultdict(list)
    question: dict[str, list[int]] = defaultdict(list)
    for r in rollouts:
        level[r.problem.difficulty].append(r.correct)
        question[r.problem.id].append(r.correct)
    level_acc = {k: sum(v) / len(v) for k, v in level.items()}
    if target == "level":
        return [level_acc[r.problem.difficulty] for r in rollouts]
    return [(sum(question[r.problem.id]) + SHRINK * level_acc[r.problem.difficulty]) / (len(question[r.problem.id]) + SHRINK)
            for r in rollouts]


def digit_examples(tokenizer, rollouts: list[Rollout], targets: list[float],
                   fmt: Format | str) -> list[tuple[list[int], int, int, float]]:
    """(token ids up to and including the confidence digit, index of the reply's first token, index
    of the digit, the target) per parsed rollout; the digit written is the target's, rounded."""
    from .grpo import build_prompt, response_prefix

    fmt = get_format(fmt)
    prefix = response_prefix(fmt)
    examples = []
    for r, t in zip(rollouts, targets):
        if r.reasoning is None:
            continue
        stated = min(0.9, round(t * 10) / 10)  # the grammar writes 0.D
        reply = fmt.render(r.reasoning, r.answer, stated)
        # the digit's place: where renderings with two different confidences first differ
        other = fmt.render(r.reasoning, r.answer, 0.9 if stated < 0.9 else 0.1)
        digit_at = next(i for i, (a, b) in enumerate(zip(reply, other)) if a != b)
        prompt = build_prompt(tokenizer, r.problem.question, fmt)
        full = tokenizer(prompt + reply[len(prefix):digit_at + 1], add_special_tokens=False)["input_ids"]
        head = tokenizer(prompt + reply[len(prefix):digit_at], add_special_tokens=False)["input_ids"]
        start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if full[:len(head)] != head or len(full) != len(head) + 1:
            continue  # the digit merged with its neighbours: no single token to train
        examples.append((full, min(start, len(head)), len(head), t))
    return examples


def fit_digits(model, tokenizer, examples: list[tuple[list[int], int, int, float]], *, epochs: int = 4,
               batch_size: int = 8, learning_rate: float = 2e-5, anchor: float = 1.0, loss: str = "cross_entropy",
               scale: ConfidenceScale = SCALE, seed: int = 0) -> list[dict]:
    """A loss on the confidence digit + `anchor` x KL(start || model) on the reply's other tokens.

    `loss`: "cross_entropy" of the digit written in the example; "brier", (E[value] - target)^2
    with E under the model's distribution over the `scale`'s symbols (renormalized over them, as the
    grammar allows only those there and the runtime reads them); or "sampled_brier",
    E[(value - target)^2], the expected Brier of the sampled digit (run 10's loss, RLCR's reward in
    expectation; kept for the ablation in benchmarks/training/warm_loss_ablation.py). The KL is the mean over the
    positions that predict the reply's tokens before the digit, against a frozen copy of the model as
    it was (0: no anchor). Returns per epoch the mean digit loss and KL.
    """
    import copy

    import torch
    import torch.nn.functional as F

    if loss not in ("cross_entropy", "brier", "sampled_brier"):
        raise ValueError(f"unknown digit loss {loss!r}; choose cross_entropy, brier or sampled_brier")
    digit_ids = torch.tensor(scale.token_ids(tokenizer))
    values = torch.tensor(scale.values, dtype=torch.float32)
    reference = copy.deepcopy(model).eval().requires_grad_(False) if anchor else None
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    rng = random.Random(seed)
    pad = tokenizer.pad_token_id
    model.train()
    history = []
    for _ in range(epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        sums = {"digit_loss": 0.0, "kl": 0.0}
        for i in range(0, len(order), batch_size):
            chunk = [examples[k] for k in order[i:i + batch_size]]
            width = max(len(ids) for ids, *_ in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            reply = torch.zeros((len(chunk), width), dtype=torch.bool)  # positions predicting reply tokens
            for row, (ids, start, digit, _) in enumerate(chunk):  # right padding: positions stay as in generation
                input_ids[row, :len(ids)] = torch.tensor(ids)
                mask[row, :len(ids)] = 1
                reply[row, max(start - 1, 0):digit - 1] = True
            logits = model(input_ids=input_ids, attention_mask=mask).logits
            rows = torch.arange(len(chunk))
            at = torch.tensor([d - 1 for _, _, d, _ in chunk])  # the position that predicts the digit
            if loss in ("brier", "sampled_brier"):
                p = logits[rows, at][:, digit_ids].float().softmax(-1)
                target = torch.tensor([t for *_, t in chunk], dtype=torch.float32)
                digit_loss = (((p @ values - target) ** 2) if loss == "brier"
                              else (p * (values[None, :] - target[:, None]) ** 2).sum(-1)).mean()
            else:
                digit_loss = F.cross_entropy(logits[rows, at], torch.tensor([ids[d] for ids, _, d, _ in chunk]))
            total = digit_loss
            kl = torch.zeros(())
            if reference is not None and reply.any():
                with torch.no_grad():
                    ref = reference(input_ids=input_ids, attention_mask=mask).logits[reply].log_softmax(-1)
                kl = F.kl_div(logits[reply].log_softmax(-1), ref, log_target=True, reduction="batchmean")
                total = total + anchor * kl
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            sums["digit_loss"] += digit_loss.item() * len(chunk)
            sums["kl"] += kl.item() * len(chunk)
        history.append({k: v / len(examples) for k, v in sums.items()})
    model.eval()
    return history


def warm_start(model, tokenizer, problems: list[Problem], fmt: Format | str, *, target: str = "level", samples: int = 4,
               temperature: float = 0.5, max_new_tokens: int = 64, epochs: int = 4, learning_rate: float = 2e-5,
               anchor: float = 1.0, seed: int = 0) -> dict:
    """Rollouts, targets, digit fine-tuning in place; returns what happened (for train_settings/logs)."""
    import torch

    torch.manual_seed(seed)
    rollouts = sample_rollouts(model, tokenizer, problems, fmt, samples=samples, temperature=temperature,
                               max_new_tokens=max_new_tokens)
    targets = confidence_targets(rollouts, target)
    examples = digit_examples(tokenizer, rollouts, targets, fmt)
    if not examples:
        raise RuntimeError("warm start: no rollout parsed; nothing to learn the confidence from")
    losses = fit_digits(model, tokenizer, examples, epochs=epochs, learning_rate=learning_rate, anchor=anchor,
                        loss=LOSSES[target], scale=get_format(fmt).scale, seed=seed)
    by_level: dict[str, list[int]] = defaultdict(list)
    for r in rollouts:
        by_level[r.problem.difficulty].append(r.correct)
    stats = {"rollouts": len(rollouts), "examples": len(examples), "target": target, "loss": LOSSES[target],
             "losses": losses,
             "level_accuracy": {k: sum(v) / len(v) for k, v in sorted(by_level.items())}}
    log.info("warm start: %s", stats)
    return stats
