"""The benchmark's pieces on real parts: summaries against numpy, the question file format the
C++ client reads, the in-process executor and cascade targets on the real SmolLM2, CLI refusals."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import pytest

from corea_engine.bench.loadgen import run_level, sweep
from corea_engine.bench.questions import QuestionSetError, load_questions, write_question_file
from corea_engine.bench.stats import LEVEL_KEYS, Sample, percentile, summarize
from corea_engine.bench.targets import CascadeTarget, ExecutorTarget, RequestOptions

SHORT = RequestOptions(contract="json", max_reasoning_chars=24, max_answer_chars=6)


@pytest.mark.parametrize("n", [1, 2, 7, 100])
def test_percentiles_match_numpy(n):
    values = list(np.random.default_rng(n).exponential(100.0, size=n))
    for q in (50, 90, 99):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([], 50) is None


def test_summary_counts_only_successes_in_figures():
    samples = [Sample(0.1, 0.05, deferred=True, slm_tokens=10, llm_tokens=20), Sample(0.3, 0.1, slm_tokens=30),
               Sample(2.0, ok=False, error="UNAVAILABLE"), Sample(1.0, ok=False, error="UNAVAILABLE")]
    level = summarize(4, samples, duration_s=2.0)
    assert tuple(level) == LEVEL_KEYS
    assert (level["requests"], level["ok"], level["errors"]) == (4, 2, 2)
    assert level["error_kinds"] == {"UNAVAILABLE": 2}
    assert level["requests_per_s"] == 1.0 and level["deferral_rate"] == 0.5
    assert level["slm_tokens_per_s"] == 20.0 and level["llm_tokens_per_s"] == 10.0
    assert level["latency_p50_ms"] == pytest.approx(200.0) and level["ttd_p99_ms"] == pytest.approx(99.5)


def test_question_file_round_trip(tmp_path):
    questions = ["plain", "two\nlines", "a back\\slash and \\n literally", "  spaced  "]
    path = write_question_file(questions, tmp_path / "q.txt")
    assert len(path.read_text().splitlines()) == len(questions)  # one line each, as corea_load reads
    assert load_questions(str(path), limit=10) == questions
    assert len(load_questions("gsm8k", limit=3)) == 3
    with pytest.raises(QuestionSetError, match="nowhere.txt"):
        load_questions("nowhere.txt")


class Failing:
    name = "failing"

    async def solve(self, question, request_id):
        raise ConnectionError(f"refused {request_id}")

    def error_kind(self, err):
        return type(err).__name__


def test_failures_are_counted_not_raised():
    level = asyncio.run(run_level(Failing(), ["q"], 3, requests=5))
    assert (level["requests"], level["errors"], level["ok"]) == (5, 5, 0)
    assert level["error_kinds"] == {"ConnectionError": 5} and level["requests_per_s"] == 0.0
    with pytest.raises(RuntimeError, match="warm-up request failed on target failing: ConnectionError"):
        asyncio.run(sweep(Failing(), ["q"], [1], requests=1, warmup=1))


def test_executor_target_reports_confidence_timing(slm_executor, gsm8k_questions):
    target = ExecutorTarget(slm_executor, SHORT)
    [level] = asyncio.run(sweep(target, gsm8k_questions[:2], [2], requests=2, warmup=0))
    assert (level["ok"], level["errors"]) == (2, 0)
    assert 0 < level["ttd_p50_ms"] <= level["latency_p99_ms"]
    assert level["slm_tokens"] > 0 and level["llm_tokens"] == 0


@pytest.mark.parametrize("threshold, deferred", [(0.0, 0), (1.0, 2)])
def test_cascade_target_deferral_follows_threshold(slm_executor, gsm8k_questions, threshold, deferred):
    from corea_engine.cascade import Cascade, CascadeConfig
    from corea_engine.escalation.local_llm import ExecutorLLM

    # The stand-in LLM shares the batch; its deadline is generous: a call past the default 30 s (a
    # loaded CI machine) degrades to the SLM's answer with no LLM tokens, which is not what this tests.
    config = CascadeConfig(max_reasoning_chars=24, max_answer_chars=6, llm_timeout_s=600.0)
    cascade = Cascade(slm_executor, ExecutorLLM(slm_executor), config)
    options = RequestOptions(contract="json", threshold=threshold)
    [level] = asyncio.run(sweep(CascadeTarget(cascade, options), gsm8k_questions[:2], [2], requests=2, warmup=0))
    assert (level["ok"], level["deferred"]) == (2, deferred)
    assert (level["llm_tokens"] > 0) == (deferred > 0)
    assert level["ttd_p50_ms"] is not None


@pytest.mark.parametrize("args, needle", [
    (["--concurrency", "1,0"], "--concurrency levels must be positive"),
    (["--concurrency", "one"], "--concurrency wants integers"),
    (["--target", "gpu"], "unknown --target"),
    (["--target", "executor", "--cpp"], "--cpp drives a gRPC server"),
    (["--questions", "missing.txt"], "neither 'gsm8k' nor a file"),
    (["--threshold", "2"], "--threshold must be in [0, 1]"),
    # an LLM in the SLM's process runs in --dtype/--quantization: its own settings are refused, not dropped
    (["--target", "cascade", "--llm-quantization", "int8wo"], "--llm-quantization sets an LLM's own weights"),
    (["--spawn", "--llm-model", "smollm2-135m", "--llm-dtype", "bfloat16"],
     "--llm-dtype: the spawned corea serve runs its in-process LLM in --dtype/--quantization"),
])
def test_cli_refuses_bad_arguments(args, needle):
    proc = subprocess.run([sys.executable, "-m", "corea_engine.cli", "bench", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
