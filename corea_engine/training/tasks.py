"""Generated arithmetic of graded difficulty: the calibration task.

Sums and products of two n-digit numbers, n = 1..4. A 135M model adds one-digit numbers
reliably and multiplies four-digit ones never, so accuracy varies with difficulty and a
calibrated confidence has something to track. Problems come from a fixed seed; the held-out
split is drawn first from its own stream, and training problems never repeat a held-out
question, so the split stays the same whatever the training size.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

OPERATIONS = ("+", "*")
DIGITS = (1, 2, 3, 4)
HELD_OUT_SEED = 20261128
TEST_SPLIT_MAX = 200  # the test split is at most the stream's first 200 questions
TRAIN_EXCLUDED = 400  # training never draws any of the stream's first 400


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: int
    operation: str
    digits: int

    @property
    def difficulty(self) -> str:
        return f"{'sum' if self.operation == '+' else 'product'}-{self.digits}d"


def _operand(rng: random.Random, digits: int) -> int:
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10**digits - 1)


def _problem(rng: random.Random, operation: str, digits: int, prefix: str, index: int) -> Problem:
    a, b = _operand(rng, digits), _operand(rng, digits)
    answer = a + b if operation == "+" else a * b
    return Problem(f"{prefix}-{index}", f"What is {a} {operation} {b}?", answer, operation, digits)


def _stream(seed: int, n: int, prefix: str, exclude: set[str] = frozenset(), repeats: bool = False) -> list[Problem]:
    """n problems cycling through every (operation, digits) level.

    Without `repeats` a question appears once, so a drawn duplicate skips its level's turn (the
    held-out split: 23-26 per level in 200). With `repeats` only `exclude` is skipped and the
    level is drawn again, so levels stay exactly balanced although a one-digit level has only
    100 questions, about half of them held out.
    """
    rng = random.Random(seed)
    levels = [(op, d) for d in DIGITS for op in OPERATIONS]
    problems: list[Problem] = []
    seen = set(exclude)
    attempts = 0
    while len(problems) < n:
        op, d = levels[(len(problems) if repeats else attempts) % len(levels)]
        attempts += 1
        p = _problem(rng, op, d, prefix, len(problems))
        if p.question in (exclude if repeats else seen):
            if attempts > 100 * n:
                raise ValueError(f"cannot draw {n} distinct problems")
            continue
        if not repeats:
            seen.add(p.question)
        problems.append(p)
    return problems


def held_out_problems(n: int = TEST_SPLIT_MAX) -> list[Problem]:
    """The fixed test split (the first n of one seeded stream; n <= 200 keeps it off validation)."""
    return _stream(HELD_OUT_SEED, n, "eval")


def validation_problems(n: int = 80) -> list[Problem]:
    """A split for choosing among checkpoints: the held-out stream after the test split's 200.

    Disjoint from every test split and never trained on, so a checkpoint picked here is judged
    on the test split without having seen it.
    """
    if not 1 <= n <= TRAIN_EXCLUDED - TEST_SPLIT_MAX:
        raise ValueError(f"validation split size must be 1..{TRAIN_EXCLUDED - TEST_SPLIT_MAX}, got {n}")
    return held_out_problems(TEST_SPLIT_MAX + n)[TEST_SPLIT_MAX:]


def training_problems(n: int, seed: int = 0, held_out: int = TRAIN_EXCLUDED) -> list[Problem]:
    """n training problems, levels exactly balanced, none equal to a first-`held_out` held-out question.

    Easy questions repeat: the one-digit levels are the ones the model gets right, and a task
    without them teaches only "confidence 0" (a first run drew them 5% of the time, its
    sampled accuracy stayed 0 and the stated confidence collapsed to 0.0).
    """
    exclude = {p.question for p in held_out_problems(held_out)}
    return _stream(seed, n, f"train{seed}", exclude, repeats=True)


_INTEGER = re.compile(r"-?\d[\d,]*(?:\.0+)?")


def extract_integer(text: str) -> int | None:
    """The last integer written in `text` ('1,234', '= 46.', '46.0'), or None."""
    matches = _INTEGER.findall(text)
    if not matches:
        return None
    token = matches[-1].replace(",", "")
    return int(float(token)) if "." in token else int(token)


def check_answer(answer_text: str, expected: int) -> bool:
    """The task's checker: the answer field's last integer equals the true result."""
    return extract_integer(answer_text) == expected
