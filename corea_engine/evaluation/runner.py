"""Run a dataset through the cascade (in this process or on a server) and record every sample.

Each question is asked once as the system would serve it (mode cascade at the threshold, or
slm_only). To draw the accuracy-vs-cost curve over every threshold, the tier that did not answer
is then asked too (`complete=True`): the SLM alone (mode slm_only) for deferred questions, the LLM
alone (mode llm_only) for accepted ones. Decoding is greedy, so these runs give the answers the
cascade would have got, and the curve is exact for the run's own settings. The sweep prices the
SLM's full run, also on questions the cascade deferred early (a slight overestimate of the SLM's
cost there).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from ..cascade import SolveRequest, SolveResult
from .datasets import Example


class Solver(Protocol):
    """A Cascade in this process, or client.AsyncCoreaClient to a server."""

    async def solve(self, request: SolveRequest) -> SolveResult: ...


@dataclass(frozen=True)
class EvalSettings:
    mode: str = "cascade"  # cascade | slm_only
    threshold: float | None = None  # None: the server's default
    confidence_source: str | None = None  # None: the server's default
    contract: object = None  # a name or a Format (in-process only); None: the server's default
    max_new_tokens: int | None = None
    concurrency: int = 8
    complete: bool = True  # also ask the tier that did not answer (for the threshold sweep)


def _confidence(result: SolveResult) -> float | None:
    return result.confidence


def _slm_fields(result: SolveResult, example: Example) -> dict:
    usable = result.answered_by == "slm" and not (result.degraded and not result.answer)
    return {
        "slm_answer": result.answer if usable else None,
        "slm_correct": bool(usable and example.check(result.answer)),
        "slm_confidence": _confidence(result),
        "slm_confidence_sampled": result.confidence_sampled,
        "slm_confidence_expected": result.confidence_expected,
        "slm_tokens": result.slm_completion_tokens,
        "slm_cost": result.cost - _llm_cost_share(result),
    }


def _llm_cost_share(result: SolveResult) -> float:
    """The LLM's part of a result's cost (the cost is SLM + LLM; llm_only_cost is exact when the LLM answered)."""
    return result.llm_only_cost if result.llm_completion_tokens else 0.0


def _llm_fields(result: SolveResult, example: Example) -> dict:
    if result.answered_by != "llm" or result.degraded:
        return {"llm_answer": None, "llm_correct": None, "llm_tokens": None, "llm_cost": None}
    return {
        "llm_answer": result.answer,
        "llm_correct": example.check(result.answer),
        "llm_tokens": result.llm_completion_tokens,
        "llm_cost": _llm_cost_share(result),
    }


async def evaluate_example(solver: Solver, example: Example, settings: EvalSettings) -> dict:
    def request(mode: str, suffix: str) -> SolveRequest:
        return SolveRequest(question=example.question, request_id=f"eval-{example.id}-{suffix}", mode=mode,
                            threshold=settings.threshold, confidence_source=settings.confidence_source,
                            contract=settings.contract, max_new_tokens=settings.max_new_tokens)

    served = await solver.solve(request(settings.mode, "serve"))
    row = {
        "id": example.id, "question": example.question, "reference": example.answer,
        "answer": served.answer, "correct": example.check(served.answer) if served.answer else False,
        "answered_by": served.answered_by, "deferred": served.deferred, "deferral_reason": served.deferral_reason,
        "degraded": served.degraded, "degraded_reason": served.degraded_reason,
        "threshold": served.threshold, "confidence_source": served.confidence_source,
        "confidence": _confidence(served), "cost": served.cost, "llm_only_cost": served.llm_only_cost,
        "latency_ms": served.latency_ms, "slm_model": served.slm_model, "llm_model": served.llm_model,
    }
    slm_result = served if served.answered_by == "slm" else None
    llm_result = served if served.answered_by == "llm" else None
    if settings.complete and slm_result is None:
        slm_result = await solver.solve(request("slm_only", "slm"))
    if settings.complete and llm_result is None and settings.mode == "cascade":
        llm_result = await solver.solve(request("llm_only", "llm"))
    if slm_result is not None:
        row.update(_slm_fields(slm_result, example))
    else:  # deferred early and not completed: only the confidence is known
        row.update(slm_answer=None, slm_correct=None, slm_confidence=_confidence(served),
                   slm_confidence_sampled=served.confidence_sampled, slm_confidence_expected=served.confidence_expected,
                   slm_tokens=served.slm_completion_tokens, slm_cost=None)
    row.update(_llm_fields(llm_result, example) if llm_result is not None else _llm_fields(served, example))
    return row


async def run_eval(solver: Solver, examples: list[Example], settings: EvalSettings, on_done=None) -> list[dict]:
    """Every example through the solver, at most `concurrency` at a time; rows in example order."""
    gate = asyncio.Semaphore(max(1, settings.concurrency))

    async def one(example: Example) -> dict:
        async with gate:
            row = await evaluate_example(solver, example, settings)
        if on_done is not None:
            on_done(row)
        return row

    return list(await asyncio.gather(*(one(e) for e in examples)))
