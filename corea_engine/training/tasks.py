"""Generated arithmetic of graded difficulty: the calibration tasks.

Two tasks, chosen by name (TASKS):

* ``arithmetic`` (the first one): sums and products of two n-digit numbers, n = 1..4. The 135M
  model adds one-digit numbers reliably and gets 6 of the 8 levels never right, so a GRPO group's
  accuracy is mostly 0 and "confidence 0" is a good answer to most questions.
* ``graded``: eight levels chosen so that the starting model's accuracy spreads over about
  0.1..0.9 (measured with benchmarks/training/probe_levels.py; table in
  benchmarks/training/README.md), so groups hold right and wrong answers at every level and a
  confidence that tracks the level is rewarded.

Problems come from a fixed seed per task; the held-out split is drawn first from its own
stream, and training problems never repeat a held-out question, so the split stays the same
whatever the training size.
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
    digits: int  # the longer operand's digits
    level: str | None = None  # the level's name; None: the arithmetic task's "sum-2d" form

    @property
    def difficulty(self) -> str:
        if self.level is not None:
            return self.level
        return f"{'sum' if self.operation == '+' else 'product'}-{self.digits}d"


@dataclass(frozen=True)
class Level:
    """One kind of question: an operation on two operands of the given digit counts."""

    operation: str  # "+", "-" (never negative), "*", or "max" (which of two numbers is larger)
    digits: tuple[int, int]

    @property
    def name(self) -> str:
        kind = {"+": "sum", "-": "diff", "*": "product", "max": "larger"}[self.operation]
        a, b = self.digits
        return f"{kind}-{a}d" if a == b else f"{kind}-{a}d{b}d"

    def problem(self, rng: random.Random, id: str, named: bool = True) -> Problem:
        a, b = (_operand(rng, d) for d in self.digits)
        if self.operation == "-" and a < b:
            a, b = b, a
        if self.operation == "max":
            question, answer = f"Which is larger, {a} or {b}?", max(a, b)
        else:
            question = f"What is {a} {self.operation} {b}?"
            answer = {"+": a + b, "-": a - b, "*": a * b}[self.operation]
        return Problem(id, question, answer, self.operation, max(self.digits), self.name if named else None)


# Every level probe_levels.py measures; `graded` keeps those the starting model gets right
# 10-90 % of the time (benchmarks/training/README.md, "Choosing the levels").
CANDIDATE_LEVELS = tuple(
    Level(op, d)
    for op, d in [
        ("+", (1, 1)), ("*", (1, 1)), ("+", (2, 1)), ("-", (2, 1)), ("-", (1, 1)), ("max", (2, 2)),
        ("max", (3, 3)), ("+", (2, 2)), ("-", (2, 2)), ("*", (2, 1)), ("+", (3, 1)), ("*", (2, 2)),
    ]
)
GRADED = ("sum-1d", "diff-1d", "product-1d", "larger-2d", "larger-3d", "sum-2d1d", "sum-2d", "diff-2d1d")
TASKS = {
    "arithmetic": tuple(Level(op, (d, d)) for d in DIGITS for op in OPERATIONS),
    # greedy 0.88..0.12, at T=0.5 0.56..0.06 (8 questions per level; README "Choosing the levels")
    "graded": tuple(next(level for level in CANDIDATE_LEVELS if level.name == name) for name in GRADED),
}
TASK_SEEDS = {"arithmetic": HELD_OUT_SEED, "graded": HELD_OUT_SEED + 1}


def task_levels(task: str) -> tuple[Level, ...]:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[task]


def _operand(rng: random.Random, digits: int) -> int:
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10**digits - 1)


def _stream(seed: int, n: int, prefix: str, levels: tuple[Level, ...], named: bool, exclude: set[str] = frozenset(),
            repeats: bool = False) -> list[Problem]:
    """n problems cycling through `levels`.

    Without `repeats` a question appears once, so a drawn duplicate skips its level's turn (the
    held-out split: 23-26 per level in 200). With `repeats` only `exclude` is skipped and the
    level is drawn again, so levels stay exactly balanced although a one-digit level has only
    100 questions, about half of them held out.
    """
    rng = random.Random(seed)
    problems: list[Problem] = []
    seen = set(exclude)
    attempts = 0
    while len(problems) < n:
        level = levels[(len(problems) if repeats else attempts) % len(levels)]
        attempts += 1
        p = level.problem(rng, f"{prefix}-{len(problems)}", named)
        if p.question in (exclude if repeats else seen):
            if attempts > 100 * n:
                raise ValueError(f"cannot draw {n} distinct problems")
            continue
        if not repeats:
            seen.add(p.question)
        problems.append(p)
    return problems


def held_out_problems(n: int = TEST_SPLIT_MAX, task: str = "arithmetic") -> list[Problem]:
    """The fixed test split (the first n of the task's seeded stream; n <= 200 keeps it off validation)."""
    levels = task_levels(task)
    # the first task names its levels "sum-2d" as before; its ids stay "eval-N" (recorded runs)
    prefix = "eval" if task == "arithmetic" else f"eval-{task}"
    return _stream(TASK_SEEDS[task], n, prefix, levels, named=task != "arithmetic")


def validation_problems(n: int = 80, task: str = "arithmetic") -> list[Problem]:
    """A split for choosing among checkpoints: the held-out stream after the test split's 200.

    Disjoint from every test split and never trained on, so a checkpoint picked here is judged
    on the test split without having seen it.
    """
    if not 1 <= n <= TRAIN_EXCLUDED - TEST_SPLIT_MAX:
        raise ValueError(f"validation split size must be 1..{TRAIN_EXCLUDED - TEST_SPLIT_MAX}, got {n}")
    return held_out_problems(TEST_SPLIT_MAX + n, task)[TEST_SPLIT_MAX:]


def training_problems(n: int, seed: int = 0, held_out: int = TRAIN_EXCLUDED, task: str = "arithmetic") -> list[Problem]:
    """n training problems, levels exactly balanced, none equal to a first-`held_out` held-out question.

    Easy questions repeat: the one-digit levels are the ones the model gets right, and a task
    without them teaches only "confidence 0" (a first run drew them 5% of the time, its
    sampled accuracy stayed 0 and the stated confidence collapsed to 0.0).
    """
    exclude = {p.question for p in held_out_problems(held_out, task)}
    prefix = f"train{seed}" if task == "arithmetic" else f"train{seed}-{task}"
    return _stream(seed, n, prefix, task_levels(task), task != "arithmetic", exclude, repeats=True)


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
