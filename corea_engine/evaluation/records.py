"""Per-sample records: what offline evaluation and calibration read.

Two JSONL schemas, one record a line:

* Model records (one model's outputs), e.g. from another serving stack:
  ``{"id": "q17", "correct": true, "confidence": 0.8, "tokens": 412}``
  ``confidence`` is null where the model stated none; ``tokens`` are completion tokens.
* Sample records (both tiers joined by id; `corea eval` writes these as samples.jsonl, with
  more fields that are ignored here):
  ``{"id": "q17", "slm_correct": true, "slm_confidence": 0.8, "slm_tokens": 412,
  "llm_correct": false, "llm_tokens": 655}``
  ``llm_correct``/``llm_tokens`` may be null when the LLM's answer is unknown (SLM-only runs).

The recorded RLCR outputs are read directly with the spec ``rlcr:DATASET:MODEL[:SOURCE]``:
DATASET is math-500 or commonsenseqa, MODEL one of RLCR_MODELS, SOURCE ``parsed`` (default: our
tag parser on ``MODEL-output_0``) or ``recorded`` (the authors' ``MODEL-confidence_levels``).
Correctness is ``MODEL-evals``, tokens ``MODEL-c_lengths``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..contract import ContractError, parse_tags
from .datasets import data_root
from .metrics import Prices

RLCR_MODELS = ("Base", "RLVR", "RLVR-Classifier", "Answer-Prob", "RLCR")
RLCR_DATASETS = {"math-500": "math500", "commonsenseqa": "csqa"}  # file stem -> id prefix


class RecordError(ValueError):
    """Records that cannot be read or joined; the message names the file, line or id."""


@dataclass(frozen=True)
class ModelRecord:
    id: str
    correct: bool
    confidence: float | None
    tokens: int


@dataclass(frozen=True)
class SampleRecord:
    id: str
    slm_correct: bool
    slm_confidence: float | None
    slm_tokens: int
    llm_correct: bool | None = None
    llm_tokens: int | None = None
    # What each tier cost on this sample, when a server reported it; else tokens x Prices.
    slm_cost: float | None = None
    llm_cost: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# reading


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise RecordError(f"{path}:{n}: not JSON ({err.msg})") from None
    except OSError as err:
        raise RecordError(f"cannot read {path}: {err.strerror}") from None
    return rows


def _confidence(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    if math.isnan(value):
        return None
    if not 0.0 <= value <= 1.0:
        raise RecordError(f"confidence {value} is outside [0, 1]")
    return value


def _optional_float(value) -> float | None:
    return None if value is None else float(value)


def rlcr_model_records(dataset: str, model: str, source: str = "parsed") -> list[ModelRecord]:
    if dataset not in RLCR_DATASETS:
        raise RecordError(f"unknown recorded dataset {dataset!r}; choose one of: {', '.join(RLCR_DATASETS)}")
    if model not in RLCR_MODELS:
        raise RecordError(f"unknown recorded model {model!r}; choose one of: {', '.join(RLCR_MODELS)}")
    if source not in ("parsed", "recorded"):
        raise RecordError(f"unknown confidence source {source!r}; choose parsed or recorded")
    records = []
    for i, row in enumerate(_read_jsonl(data_root() / "rlcr_eval_outputs" / f"{dataset}.jsonl")):
        if source == "recorded":
            confidence = row[f"{model}-confidence_levels"][0]
        else:
            try:
                confidence = parse_tags(row[f"{model}-output_0"]).confidence
            except ContractError:
                confidence = None
        records.append(ModelRecord(f"{RLCR_DATASETS[dataset]}-{i}", bool(row[f"{model}-evals"][0]),
                                   confidence, int(row[f"{model}-c_lengths"][0])))
    return records


def read_model_records(spec: str) -> list[ModelRecord]:
    """Model records from a JSONL path or an ``rlcr:DATASET:MODEL[:SOURCE]`` spec."""
    if spec.startswith("rlcr:"):
        parts = spec.split(":")
        if len(parts) not in (3, 4):
            raise RecordError(f"bad spec {spec!r}: expected rlcr:DATASET:MODEL[:parsed|recorded]")
        return rlcr_model_records(*parts[1:])
    records = []
    for n, row in enumerate(_read_jsonl(Path(spec)), 1):
        try:
            records.append(ModelRecord(str(row["id"]), bool(row["correct"]), _confidence(row.get("confidence")),
                                       int(row["tokens"])))
        except (KeyError, TypeError, ValueError) as err:
            raise RecordError(f"{spec}:{n}: needs id, correct, confidence, tokens ({err})") from None
    return records


def join(slm: list[ModelRecord], llm: list[ModelRecord]) -> list[SampleRecord]:
    """SLM and LLM records of the same questions, in the SLM's order."""
    by_id = {r.id: r for r in llm}
    missing = [r.id for r in slm if r.id not in by_id]
    if missing:
        raise RecordError(f"{len(missing)} SLM ids have no LLM record, e.g. {missing[:3]}")
    return [SampleRecord(r.id, r.correct, r.confidence, r.tokens, by_id[r.id].correct, by_id[r.id].tokens) for r in slm]


def read_samples(path: str | Path) -> list[SampleRecord]:
    records = []
    for n, row in enumerate(_read_jsonl(Path(path)), 1):
        try:
            llm_correct = row.get("llm_correct")
            llm_tokens = row.get("llm_tokens")
            if row["slm_correct"] is None:
                raise RecordError(f"{path}:{n}: the SLM's answer is unknown (a `corea eval --no-complete` row "
                                  "deferred early); records need the SLM's correctness")
            records.append(SampleRecord(
                str(row["id"]), bool(row["slm_correct"]), _confidence(row.get("slm_confidence")), int(row["slm_tokens"]),
                None if llm_correct is None else bool(llm_correct), None if llm_tokens is None else int(llm_tokens),
                _optional_float(row.get("slm_cost")), _optional_float(row.get("llm_cost")),
            ))
        except (KeyError, TypeError, ValueError) as err:
            raise RecordError(f"{path}:{n}: needs id, slm_correct, slm_confidence, slm_tokens ({err})") from None
    return records


def write_jsonl(path: str | Path, rows) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row if isinstance(row, dict) else row.as_dict()) + "\n")


# ---------------------------------------------------------------------------------------------
# columns for the metrics


@dataclass(frozen=True)
class Columns:
    slm_correct: np.ndarray
    slm_confidence: np.ndarray  # NaN = no confidence stated
    slm_cost: np.ndarray
    llm_correct: np.ndarray | None  # None when any sample lacks the LLM's answer
    llm_cost: np.ndarray | None

    @property
    def has_llm(self) -> bool:
        return self.llm_correct is not None

    def subset(self, index) -> "Columns":
        pick = (lambda a: None if a is None else a[index])
        return Columns(self.slm_correct[index], self.slm_confidence[index], self.slm_cost[index],
                       pick(self.llm_correct), pick(self.llm_cost))

    def __len__(self) -> int:
        return int(self.slm_correct.size)


def columns(records: list[SampleRecord], prices: Prices = Prices()) -> Columns:
    """Arrays for the metrics; a tier's cost is the reported one, else its tokens x price."""
    has_llm = bool(records) and all(r.llm_correct is not None and r.llm_tokens is not None for r in records)

    def cost(reported, tokens, price):
        return reported if reported is not None else tokens * price

    return Columns(
        np.array([float(r.slm_correct) for r in records]),
        np.array([math.nan if r.slm_confidence is None else r.slm_confidence for r in records], dtype=float),
        np.array([cost(r.slm_cost, r.slm_tokens, prices.slm) for r in records], dtype=float),
        np.array([float(r.llm_correct) for r in records]) if has_llm else None,
        np.array([cost(r.llm_cost, r.llm_tokens, prices.llm) for r in records], dtype=float) if has_llm else None,
    )
