"""`corea demo` (what `make run` runs): stand-in LLM service + cascade service, questions over gRPC and one over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_corea_demo_answers_through_the_cascade_over_grpc():
    # no COLUMNS and a pipe: the demo's own width for a file (160) must keep each line whole
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    out = subprocess.run([sys.executable, "-m", "corea_engine.cli", "demo", "-n", "2", "--max-reasoning-chars", "60"],
                         capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "GSM8K through the cascade over gRPC" in out.stdout
    assert "answered by" in out.stdout and "SLM: smollm2-135m; LLM: smollm2-135m (stand-in LLM) over gRPC (sglang.grpc.scheduler.SglangScheduler)" in out.stdout
    assert "2 questions in" in out.stdout and "confidence = sampled / expected, the expected one decides" in out.stdout
    assert "over HTTP (OpenAI API, http://127.0.0.1:" in out.stdout and "x-corea-tier" in out.stdout


def test_corea_solve_without_an_llm_tier_runs_a_stand_in_and_says_so():
    out = subprocess.run([sys.executable, "-m", "corea_engine.cli", "solve", "What is 2 + 3?", "--threshold", "1.0",
                          "--max-new-tokens", "60"], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "no LLM tier configured; smollm2-135m stands in for it" in out.stderr
    result = json.loads(out.stdout)
    # threshold 1.0 defers every answer, so the stand-in tier really answered
    assert result["answered_by"] == "llm" and result["llm_model"] == "smollm2-135m (stand-in LLM)"
