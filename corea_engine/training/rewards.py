"""Reward functions for calibration training, in TRL's form (prompts, completions, **kw) -> floats.

* format: 1 when the completion parses under the contract, else 0.
* correctness: 1 when it parses and the task's checker accepts the answer, else 0.
* calibration (COREA): minus the distance between the stated confidence and the empirical
  accuracy of the GRPO group on that question (the mean correctness of the group's completions,
  this one included). Distances: "l1" (default), "l2", "kl" (KL between Bernoulli(accuracy) and
  Bernoulli(confidence)). A completion that states no confidence is scored as if it had stated
  the worst one (0 when the group is mostly right, 1 when mostly wrong).
* brier: -(confidence - correct)^2, per sample; -1 when unparsed.
* rlcr (RLCR, arXiv 2507.16806, in one function): correct + 1 - (confidence - correct)^2, per
  sample; 0 when unparsed (what "wrong, stated 1" scores).

Presets (REWARD_PRESETS, `corea train --reward`): corea = format + correctness + calibration
(L1 to the group accuracy); rlcr = format + rlcr; coca (arXiv 2603.05881) = format + correctness
+ calibration (squared distance to the group accuracy, the confidence being the probability of
answering right under the current policy) on a confidence-first contract, with the calibration
reward credited to the confidence's tokens only and the others to the rest (grpo.py, segments).

Grouping. TRL's GRPOTrainer draws prompts with a RepeatSampler(mini_repeat_count=
num_generations), so the num_generations completions of one prompt sit next to each other in
the batch the reward functions receive (trl/trainer/grpo_trainer.py, `_get_train_sampler`; the
advantages are computed with rewards.view(-1, num_generations)). We do not rely on adjacency:
completions are grouped by their `question_id` dataset column (TRL passes every dataset column
to reward functions as a list aligned with completions), falling back to the prompt text, so a
question that appears twice in one batch simply pools its samples.

Completions are text continuing a response prefix (see grpo.response_prefix): the prefix is
prepended before parsing, so the parser sees the whole reply exactly as the runtime would.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..contract import ContractError, Format, Parsed, get_format
from .tasks import check_answer

DISTANCES = ("l1", "l2", "kl")
KL_EPS = 1e-3  # keeps KL finite at confidence 0 or 1


class UnknownDistanceError(ValueError):
    """A calibration distance that is not one of DISTANCES."""


def completion_text(completion) -> str:
    """TRL passes text for plain prompts and [{'role': 'assistant', 'content': ...}] for chats."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise TypeError(f"unsupported completion type {type(completion).__name__}")


def parse_completion(completion, fmt: Format, prefix: str = "") -> Parsed | None:
    """The completion under the contract, or None when it does not parse."""
    try:
        return fmt.parse(prefix + completion_text(completion))
    except ContractError:
        return None


def calibration_distance(confidence: float, accuracy: float, kind: str = "l1") -> float:
    if kind == "l1":
        return abs(confidence - accuracy)
    if kind == "l2":
        return (confidence - accuracy) ** 2
    if kind == "kl":
        q = min(max(confidence, KL_EPS), 1 - KL_EPS)
        p = accuracy
        total = 0.0
        if p > 0:
            total += p * math.log(p / q)
        if p < 1:
            total += (1 - p) * math.log((1 - p) / (1 - q))
        return total
    raise UnknownDistanceError(f"unknown calibration distance {kind!r}; choose one of: {', '.join(DISTANCES)}")


def group_keys(prompts: Sequence, kwargs: dict) -> list[str]:
    """One key per completion naming its question: `question_id` if given, else the prompt."""
    ids = kwargs.get("question_id")
    if ids is not None:
        if len(ids) != len(prompts):
            raise ValueError(f"question_id has {len(ids)} entries for {len(prompts)} completions")
        return [str(i) for i in ids]
    return [repr(p) for p in prompts]


def group_accuracy(keys: Sequence[str], correct: Sequence[float]) -> list[float]:
    """Per completion: the mean correctness of all completions that share its key."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for key, c in zip(keys, correct, strict=True):
        totals[key][0] += c
        totals[key][1] += 1
    return [totals[k][0] / totals[k][1] for k in keys]


@dataclass
class RewardSet:
    """The reward functions for one contract and task, plus their weights for GRPOConfig.

    weights: name -> weight; a function with weight 0 is left out. Names are those TRL logs
    (rewards/<name>/mean).
    """

    fmt: Format
    prefix: str = ""
    distance: str = "l1"
    weights: dict[str, float] = field(default_factory=lambda: {"format": 0.5, "correctness": 1.0, "calibration": 1.0})

    def __post_init__(self):
        self.fmt = get_format(self.fmt)
        calibration_distance(0.5, 0.5, self.distance)  # refuse an unknown distance early
        unknown = set(self.weights) - set(REWARD_NAMES)
        if unknown:
            raise ValueError(f"unknown reward(s) {sorted(unknown)}; choose from: {', '.join(REWARD_NAMES)}")

    # -- the pieces every reward needs ------------------------------------------------
    def _parse_all(self, completions) -> list[Parsed | None]:
        return [parse_completion(c, self.fmt, self.prefix) for c in completions]

    def _correct(self, parsed: list[Parsed | None], answers) -> list[float]:
        if answers is None:
            raise ValueError("the dataset needs an 'answer' column for the correctness check")
        return [float(p is not None and check_answer(p.answer, int(a))) for p, a in zip(parsed, answers, strict=True)]

    # -- the rewards ----------------------------------------------------------------
    def format(self, prompts, completions, **kwargs) -> list[float]:
        parsed = self._parse_all(completions)
        rewards = [float(p is not None) for p in parsed]
        _log(kwargs, "format_rate", rewards)
        return rewards

    def correctness(self, prompts, completions, answer=None, **kwargs) -> list[float]:
        parsed = self._parse_all(completions)
        rewards = self._correct(parsed, answer)
        _log(kwargs, "accuracy", rewards)
        _log_by_level(kwargs, parsed, rewards)
        return rewards

    def calibration(self, prompts, completions, answer=None, **kwargs) -> list[float]:
        parsed = self._parse_all(completions)
        correct = self._correct(parsed, answer)
        accuracy = group_accuracy(group_keys(prompts, kwargs), correct)
        rewards = []
        for p, acc in zip(parsed, accuracy):
            stated = p.confidence if p is not None else (0.0 if acc >= 0.5 else 1.0)
            rewards.append(-calibration_distance(stated, acc, self.distance))
        stated = [p.confidence for p in parsed if p is not None]
        if stated:
            _log(kwargs, "mean_confidence", stated)
        _log_by_level(kwargs, parsed, correct)
        return rewards

    def brier(self, prompts, completions, answer=None, **kwargs) -> list[float]:
        parsed = self._parse_all(completions)
        correct = self._correct(parsed, answer)
        return [-1.0 if p is None else -((p.confidence - c) ** 2) for p, c in zip(parsed, correct)]

    def rlcr(self, prompts, completions, answer=None, **kwargs) -> list[float]:
        parsed = self._parse_all(completions)
        correct = self._correct(parsed, answer)
        stated = [p.confidence for p in parsed if p is not None]
        if stated:
            _log(kwargs, "mean_confidence", stated)
        _log(kwargs, "accuracy", correct)
        _log_by_level(kwargs, parsed, correct)
        return [0.0 if p is None else c + 1 - (p.confidence - c) ** 2 for p, c in zip(parsed, correct)]

    def functions(self) -> tuple[list[Callable], list[float]]:
        """(reward functions, weights) for GRPOTrainer(reward_funcs=...) and GRPOConfig(reward_weights=...)."""
        funcs, weights = [], []
        for name in REWARD_NAMES:
            weight = self.weights.get(name, 0.0)
            if weight:
                funcs.append(_named(getattr(self, name), name))
                weights.append(float(weight))
        if not funcs:
            raise ValueError("every reward weight is zero")
        return funcs, weights


REWARD_NAMES = ("format", "correctness", "calibration", "brier", "rlcr")
CONFIDENCE_REWARDS = ("calibration", "brier")  # rewards that judge only the stated confidence


@dataclass(frozen=True)
class RewardPreset:
    """A named reward from the literature: weights, calibration distance, and whether it needs a
    confidence-first contract with the confidence's reward credited to its own tokens."""

    weights: dict[str, float]
    distance: str = "l1"
    segmented: bool = False


REWARD_PRESETS = {
    "corea": RewardPreset({"format": 0.5, "correctness": 1.0, "calibration": 1.0}),
    "rlcr": RewardPreset({"format": 0.5, "rlcr": 1.0}),
    "coca": RewardPreset({"format": 0.5, "correctness": 1.0, "calibration": 1.0}, distance="l2", segmented=True),
}


def _named(method, name: str) -> Callable:
    # TRL names each reward by __name__ in its logs; a bound method would do, but a plain
    # function keeps the name stable whatever the class calls it.
    def reward(prompts, completions, **kwargs):
        return method(prompts, completions, **kwargs)

    reward.__name__ = name
    return reward


def _log(kwargs: dict, name: str, values: Sequence[float]) -> None:
    log_metric = kwargs.get("log_metric")
    if log_metric is not None and values:
        log_metric(name, sum(values) / len(values))


def _log_by_level(kwargs: dict, parsed: list[Parsed | None], correct: list[float]) -> None:
    """accuracy/<level> and confidence/<level>: whether confidence separates easy from hard."""
    levels = kwargs.get("difficulty")
    if levels is None:
        return
    by_level: dict[str, list[int]] = defaultdict(list)
    for i, level in enumerate(levels):
        by_level[str(level)].append(i)
    for level, rows in by_level.items():
        _log(kwargs, f"accuracy/{level}", [correct[i] for i in rows])
        _log(kwargs, f"confidence/{level}", [parsed[i].confidence for i in rows if parsed[i] is not None])


def parse_weights(text: str) -> dict[str, float]:
    """'format=0.5,correctness=1,calibration=1' -> dict, refusing unknown names and bad numbers."""
    weights = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in REWARD_NAMES:
            raise ValueError(f"bad reward weight {item!r}: expected NAME=NUMBER with NAME in {', '.join(REWARD_NAMES)}")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"bad reward weight {item!r}: {value!r} is not a number") from None
    return weights
