"""Benchmark datasets read from the project's shared data folder (never copied into the repo)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


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


def load_gsm8k(split: str = "test", limit: int | None = None) -> list[Example]:
    path = data_root() / "benchmarks" / f"gsm8k_{split}.jsonl"
    examples = []
    with open(path) as f:
        for i, line in enumerate(f):
            if limit is not None and i >= limit:
                break
            row = json.loads(line)
            examples.append(Example(f"gsm8k-{split}-{i}", row["problem"], row["answer"]))
    return examples
