"""A closed-loop asyncio load generator: `concurrency` workers, each with one request in flight.

A level ends after a fixed number of requests (at least one per worker, so every slot is
exercised) or after a fixed time (requests already started are waited for and counted).
"""

from __future__ import annotations

import asyncio
import itertools
import time

from .stats import Sample, summarize


async def run_level(target, questions: list[str], concurrency: int, *, requests: int | None = None,
                    seconds: float | None = None, id_prefix: str = "py") -> dict:
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    if (requests is None) == (seconds is None):
        raise ValueError("give exactly one of requests or seconds")
    total = None if requests is None else max(requests, concurrency)
    counter = itertools.count()
    samples: list[Sample] = []
    start = time.perf_counter()
    deadline = None if seconds is None else start + seconds

    async def worker() -> None:
        while True:
            i = next(counter)
            if (deadline is not None and time.perf_counter() >= deadline) or (total is not None and i >= total):
                return
            samples.append(await call(target, questions[i % len(questions)], f"{id_prefix}-c{concurrency}-{i}"))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summarize(concurrency, samples, time.perf_counter() - start)


async def call(target, question: str, request_id: str) -> Sample:
    """One request; a failure becomes an error sample (the level goes on)."""
    start = time.perf_counter()
    try:
        return await target.solve(question, request_id)
    except Exception as err:  # counted, not raised: a benchmark reports errors
        return Sample(time.perf_counter() - start, ok=False, error=target.error_kind(err))


async def sweep(target, questions: list[str], levels: list[int], *, requests: int | None = None,
                seconds: float | None = None, warmup: int = 1, on_level=None) -> list[dict]:
    """Warm up (grammar compile, first forward), then every level in order."""
    for i in range(warmup):
        sample = await call(target, questions[i % len(questions)], f"warmup-{i}")
        if not sample.ok:
            raise RuntimeError(f"warm-up request failed on target {target.name}: {sample.error}")
    results = []
    for level in levels:
        summary = await run_level(target, questions, level, requests=requests, seconds=seconds)
        results.append(summary)
        if on_level is not None:
            on_level(summary)
    return results
