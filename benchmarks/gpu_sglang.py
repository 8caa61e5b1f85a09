"""GPU check and benchmark of the SGLang runtime: a real engine with dummy weights, through our executor.

For a CUDA machine where sglang (with sgl-kernel) is installed: `pip install -e '.[sglang]'`.
Not run in CI, and not runnable on the CPU machines (no SGLang engine there).

The engine starts on a weights-free copy of a real model folder (config + tokenizer only) with
load_format="dummy": random weights of the real architecture, so throughput is realistic while
answers are nonsense. The contract grammar still holds every output to the format, so each
answer-first request must end on its confidence step with a reading whose mass is on the scale.
Run:

    python benchmarks/gpu_sglang.py --model PATH/TO/SmolLM2-135M-Instruct [--requests 64]
        [--concurrency 16] [--tp-size 1] [--mem-fraction-static 0.5] [--out result.json]

PATH needs config.json and the tokenizer files (weights are not read). Without --model the
embedded SmolLM2 folder from corea_engine.models is used when it is present. Prints one JSON
summary (also written to --out): requests, finish reasons, checks passed, tokens/s, latency
percentiles, time to confidence, and for confidence_source="device" how far the in-sampler
kernel's readings are from the log-probability ones on the same requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

QUESTIONS = [
    "A baker makes 12 rolls and sells 5. How many rolls are left?",
    "Tom has 3 boxes of 8 pencils. How many pencils does he have?",
    "A train travels 60 km in 1.5 hours. What is its speed in km/h?",
    "Sara reads 15 pages a day. How many pages does she read in 2 weeks?",
]
NOT_WEIGHTS = (".json", ".txt", ".model", ".tiktoken", ".jinja")


def weightless_copy(model: Path, target: Path) -> Path:
    """config + tokenizer files of `model` in `target` (dummy weights need no more)."""
    target.mkdir(parents=True, exist_ok=True)
    for f in model.iterdir():
        if f.is_file() and f.suffix in NOT_WEIGHTS and not f.name.endswith(".index.json"):
            shutil.copy(f, target / f.name)
    if not (target / "config.json").is_file():
        raise SystemExit(f"{model} has no config.json")
    return target


async def serve_all(executor, requests, concurrency: int):
    gate = asyncio.Semaphore(concurrency)

    async def one(request):
        async with gate:
            return await executor.generate_async(request)

    return await asyncio.gather(*(one(r) for r in requests))


def run_source(model_dir: Path, source: str, args) -> dict:
    from corea_engine.cascade import check_contract
    from corea_engine.contract import build_messages, get_format
    from corea_engine.runtime.executor import Request, SamplingParams
    from corea_engine.runtime.sglang_executor import SglangExecutor

    fmt = get_format(args.contract).bounded(max_reasoning_chars=args.max_reasoning_chars)
    options = {
        "load_format": "dummy",
        "dtype": args.dtype,
        "tp_size": args.tp_size,
        "mem_fraction_static": args.mem_fraction_static,
        "max_running_requests": args.max_running_requests,
        "random_seed": 1234,
        "log_level": "error",
    }
    t0 = time.perf_counter()
    executor = SglangExecutor(str(model_dir), confidence_source=source, **options)
    startup_s = time.perf_counter() - t0
    try:
        requests = [
            Request(
                messages=build_messages(QUESTIONS[i % len(QUESTIONS)], fmt),
                contract=fmt,
                sampling=SamplingParams(temperature=0.0),
                request_id=f"{source}-{i}",
            )
            for i in range(args.requests)
        ]
        executor.generate(requests[0])  # warm-up: grammar compile, CUDA graphs
        t0 = time.perf_counter()
        results = asyncio.run(serve_all(executor, requests, args.concurrency))
        wall_s = time.perf_counter() - t0
        # Abort: a long free-text request aborted mid-way must finish with "abort".
        long = Request(prompt="Count from one to a thousand in words:", sampling=SamplingParams(max_new_tokens=2000))
        stream = executor.submit(long)
        next(iter(stream))
        executor.abort(long.request_id)
        aborted = stream.wait(timeout=60).finish_reason
    finally:
        executor.close()
    answers = {r.request_id: check_contract(fmt, r.text, r.finish_reason, r.error) for r in results}
    failures = [
        f"{r.request_id}: {r.finish_reason} {r.error or answers[r.request_id][1]}"
        for r in results
        if not (
            r.finish_reason == "confidence"
            and r.confidence is not None
            and r.confidence.mass > 0.99
            and answers[r.request_id][0] is not None
            and answers[r.request_id][0].confidence == r.confidence.sampled
        )
    ]
    latencies = sorted(r.latency_s for r in results)
    return {
        "confidence_source": source,
        "startup_s": round(startup_s, 1),
        "requests": len(results),
        "finish_reasons": {k: sum(r.finish_reason == k for r in results) for k in {r.finish_reason for r in results}},
        "failures": failures[:10],
        "abort_finish_reason": aborted,
        "completion_tokens": sum(r.completion_tokens for r in results),
        "tokens_per_s": round(sum(r.completion_tokens for r in results) / wall_s, 1),
        "latency_p50_s": round(statistics.median(latencies), 4),
        "latency_p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 4),
        "time_to_confidence_p50_s": round(statistics.median(r.time_to_confidence_s or 0.0 for r in results), 4),
        "readings": {r.request_id.split("-", 1)[1]: (r.confidence.expected if r.confidence else None) for r in results},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="folder with config.json + tokenizer (default: the embedded SmolLM2 folder)")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--contract", default="json")
    p.add_argument("--max-reasoning-chars", type=int, default=200)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--tp-size", type=int, default=1)
    p.add_argument("--mem-fraction-static", type=float, default=0.5)
    p.add_argument("--max-running-requests", type=int, default=64)
    p.add_argument("--sources", default="logprobs,device", help="confidence sources to run, comma-separated")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.model is None:
        from corea_engine.models import resolve_model

        args.model = str(resolve_model().path)
    summary = {"model": args.model, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = weightless_copy(Path(args.model), Path(tmp) / "model")
        for source in args.sources.split(","):
            summary["runs"].append(run_source(model_dir, source, args))
    runs = {r["confidence_source"]: r for r in summary["runs"]}
    if {"logprobs", "device"} <= runs.keys():
        # Same seed, same dummy weights, greedy: the two sources read the same distributions.
        a, b = runs["logprobs"]["readings"], runs["device"]["readings"]
        diffs = [abs(a[k] - b[k]) for k in a if a.get(k) is not None and b.get(k) is not None]
        summary["device_vs_logprobs_max_abs_expected_diff"] = max(diffs) if diffs else None
    for run in summary["runs"]:
        run.pop("readings")
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    ok = all(not r["failures"] and r["abort_finish_reason"] == "abort" for r in summary["runs"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
