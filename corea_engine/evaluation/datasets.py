"""Benchmark datasets read from the project's shared data folder (never copied into the repo).

Every loader returns `Example`s: an id, the question as the model sees it, the reference answer
and the checker kind (see checking.py) that `Example.check(prediction)` applies.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import checking


class UnknownDatasetError(ValueError):
    """A dataset name that is not one of DATASETS."""


def data_root() -> Path:
    """COREA_DATA, else the first `shared/data` beside the working directory or this checkout."""
    env = os.environ.get("COREA_DATA")
    if env:
        return Path(env)
    for start in (Path.cwd(), Path(__file__).resolve()):
        for folder in [start, *start.parents]:
            candidate = folder.parent / "shared" / "data"
            if candidate.is_dir():
                return candidate
    raise FileNotFoundError("benchmark data not found: set COREA_DATA to the shared/data folder")


@dataclass(frozen=True)
class Example:
    id: str
    question: str
    answer: str
    kind: str = "math"  # checker: math | choice | alias
    aliases: tuple[str, ...] = ()  # alias: every accepted answer
    options: dict = field(default_factory=dict, hash=False, compare=False)  # choice: letter -> text

    def check(self, prediction: str | None) -> bool:
        if prediction is None:
            return False
        return checking.check(self.kind, prediction, self.answer, aliases=self.aliases, options=self.options)


def _rows(path: Path, limit: int | None):
    with open(path) as f:
        for i, line in enumerate(f):
            if limit is not None and i >= limit:
                return
            yield i, json.loads(line)


def load_gsm8k(split: str = "test", limit: int | None = None) -> list[Example]:
    path = data_root() / "benchmarks" / f"gsm8k_{split}.jsonl"
    return [Example(f"gsm8k-{split}-{i}", row["problem"], row["answer"]) for i, row in _rows(path, limit)]


def load_math500(limit: int | None = None) -> list[Example]:
    """MATH-500: the problem columns of the recorded-outputs file (row order = record order)."""
    path = data_root() / "rlcr_eval_outputs" / "math-500.jsonl"
    return [Example(f"math500-{i}", row["problem"], row["answer"]) for i, row in _rows(path, limit)]


def load_commonsenseqa(limit: int | None = None) -> list[Example]:
    path = data_root() / "benchmarks" / "commonsenseqa_test.jsonl"
    return [
        Example(f"csqa-{i}", row["problem"].strip(), row["answerKey"], "choice",
                options=checking.parse_options(row["problem"]))
        for i, row in _rows(path, limit)
    ]


def load_bigmath_digits(limit: int | None = None) -> list[Example]:
    path = data_root() / "benchmarks" / "bigmath_digits_test.jsonl"
    return [Example(f"bigmath-{i}", row["problem"], row["answer"]) for i, row in _rows(path, limit)]


def load_triviaqa(limit: int | None = None) -> list[Example]:
    path = data_root() / "benchmarks" / "triviaqa_test.jsonl"
    return [
        # question_id repeats (1696 distinct in 2000 rows): the row index makes the id unique.
        Example(f"triviaqa-{i}", row["question"], row["answer"][0], "alias", tuple(row["answer"]))
        for i, row in _rows(path, limit)
    ]


DATASETS = {
    "gsm8k": lambda limit=None: load_gsm8k("test", limit),
    "gsm8k_train": lambda limit=None: load_gsm8k("train", limit),
    "math500": load_math500,
    "commonsenseqa": load_commonsenseqa,
    "bigmath_digits": load_bigmath_digits,
    "triviaqa": load_triviaqa,
}


def load_dataset(name: str, limit: int | None = None) -> list[Example]:
    try:
        loader = DATASETS[name]
    except KeyError:
        raise UnknownDatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}") from None
    return loader(limit=limit)
