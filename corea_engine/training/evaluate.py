"""Before/after evaluation of a model on the held-out arithmetic split, through the runtime.

Each question goes through TorchExecutor under the contract's grammar, greedy, exactly as
`corea solve` serves it; the result gives the parsed answer and both confidences: sampled (the
digit written) and expected (the mean of the scale under the model's distribution there).
Metrics come from corea_engine.evaluation.metrics (ECE with 10 equal-width bins, AUROC, Brier).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass

from ..contract import build_messages, get_format
from ..evaluation.metrics import calibration_summary
from .tasks import Problem, check_answer

EVAL_REASONING_CHARS = 80  # arithmetic needs one line; bounds the greedy decode (and its time)


@dataclass
class Sample:
    id: str
    difficulty: str
    answer: str | None
    correct: bool
    sampled: float  # NaN when no confidence was read
    expected: float
    completion_tokens: int


def run_samples(problems: list[Problem], *, model=None, executor=None, contract: str = "json", threads: int | None = None,
                max_batch_size: int = 16) -> list[Sample]:
    """Answer every problem with the runtime; give `executor` to reuse a loaded one."""
    from ..cascade import check_contract
    from ..runtime.executor import Request, SamplingParams
    from ..runtime.torch_executor import TorchExecutor

    fmt = get_format(contract).bounded(max_reasoning_chars=EVAL_REASONING_CHARS)
    own = executor is None
    if own:
        executor = TorchExecutor(model, threads=threads, max_batch_size=max_batch_size)
    try:
        streams = [
            executor.submit(Request(messages=build_messages(p.question, fmt), contract=fmt, sampling=SamplingParams(temperature=0.0)))
            for p in problems
        ]
        results = [s.wait() for s in streams]
    finally:
        if own:
            executor.close()
    samples = []
    for p, r in zip(problems, results):
        parsed, _ = check_contract(fmt, r.text, r.finish_reason, r.error)
        answer = parsed.answer if parsed is not None else None
        reading = r.confidence
        samples.append(
            Sample(
                id=p.id,
                difficulty=p.difficulty,
                answer=answer,
                correct=answer is not None and check_answer(answer, p.answer),
                sampled=reading.sampled if reading is not None else math.nan,
                expected=reading.expected if reading is not None else math.nan,
                completion_tokens=r.completion_tokens,
            )
        )
    return samples


def summarize(samples: list[Sample]) -> dict:
    """Accuracy plus ECE/AUROC/Brier for the sampled and the expected confidence, and per level."""
    correct = [int(s.correct) for s in samples]
    out = {
        "n": len(samples),
        "accuracy": sum(correct) / len(correct) if correct else math.nan,
        "sampled": calibration_summary([s.sampled for s in samples], correct),
        "expected": calibration_summary([s.expected for s in samples], correct),
    }
    levels: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        levels[s.difficulty].append(s)
    out["by_difficulty"] = {
        name: {
            "n": len(group),
            "accuracy": sum(s.correct for s in group) / len(group),
            "mean_sampled": _nanmean([s.sampled for s in group]),
            "mean_expected": _nanmean([s.expected for s in group]),
        }
        for name, group in sorted(levels.items())
    }
    return out


def _nanmean(values) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def samples_as_dicts(samples: list[Sample]) -> list[dict]:
    return [asdict(s) for s in samples]


def write_records(samples: list[Sample], path, source: str = "expected") -> None:
    """The samples as `corea calibrate --samples` records, with the `source` confidence as the SLM's.

    For fitting a calibrator on the validation split and checking it on test
    (`corea calibrate --fit KIND --source SOURCE --samples VAL --holdout-samples TEST`).
    """
    import json

    if source not in ("expected", "sampled"):
        raise ValueError(f"source must be 'expected' or 'sampled', got {source!r}")
    with open(path, "w") as f:
        for s in samples:
            confidence = getattr(s, source)
            f.write(json.dumps({"id": s.id, "slm_correct": s.correct, "slm_tokens": s.completion_tokens,
                                "slm_confidence": None if math.isnan(confidence) else confidence}) + "\n")
