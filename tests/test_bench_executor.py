"""benchmarks/bench_executor.py, run small as a user would (a subprocess). CI does not build
llama.cpp, so there its rows are left out with the reason and --require-llamacpp refuses; where
benchmarks/setup_llamacpp.sh has built it, test_rows_beside_llamacpp runs them too.

The full run (8 prompts, 64 tokens, fp32 and bf16, 8 and 32 concurrent, beside llama.cpp) is the
command in README ("Measured figures").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_executor.py"
BUDGET = 3


def bench(*args, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


def test_rows_without_llamacpp(tmp_path):
    out = tmp_path / "figures.json"
    proc = bench("--n", "2", "--concurrency", "2", "--max-new-tokens", str(BUDGET), "--dtypes", "float32,bfloat16+int8wo",
                 "--threads", "1", "--busy-neighbour", "--llamacpp-venv", str(tmp_path / "no-venv"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"llama.cpp rows left out: no llama.cpp venv at {tmp_path / 'no-venv'}" in proc.stdout
    assert proc.stdout.rstrip().splitlines()[-1].startswith("llama.cpp rows left out:")  # also after the table
    figures = json.loads(out.read_text())
    assert "no-venv" in figures["llamacpp"]["left_out"]
    assert list(figures["load_average"]) == ["baseline", "busy neighbour"]
    rows = figures["rows"]
    # Every row twice: on the machine as it is, then beside one spinning process.
    assert [r["condition"] for r in rows] == ["baseline"] * 11 + ["busy neighbour"] * 11
    corea = [("free text", "single stream"), ("free text", "2 concurrent"),
             ("json contract", "single stream"), ("json contract", "2 concurrent")]
    assert [(r["engine"], r["dtype"], r["workload"], r["mode"]) for r in rows] == 2 * [
        *(("corea", "float32", *row) for row in corea),
        ("transformers", "float32", "free text", "single stream"), ("transformers", "float32", "free text", "static batch 2"),
        ("transformers", "float32", "json contract", "static batch 2"),
        *(("corea", "bfloat16+int8wo", *row) for row in corea),  # corea alone: transformers has no int8wo here
    ]
    for row in rows:
        assert row["requests"] == 2
        # Both prompts ran: at least one token each, never past the budget.
        assert 2 <= row["tokens"] <= 2 * BUDGET and row["seconds"] > 0, row
        assert row["ratio"] is None  # nothing to divide by without llama.cpp
    for row in rows:
        if row["engine"] == "corea" and row["workload"] == "json contract":
            assert 0 < row["grammar_share"] < 1, row  # xgrammar ran inside the decode steps
        assert (row["prefill_share"] is not None) == (row["engine"] == "corea"), row
        if row["engine"] == "corea":
            assert 0 < row["prefill_share"] < 1, row  # every prompt was prefilled inside the row's time
    assert "| busy neighbour | corea | float32 | json contract | 2 concurrent |" in proc.stdout


def test_require_llamacpp_refuses_without_its_venv(tmp_path):
    proc = bench("--require-llamacpp", "--llamacpp-venv", str(tmp_path / "no-venv"), "--out", str(tmp_path / "f.json"),
                 timeout=120)
    assert proc.returncode == 2
    assert "--require-llamacpp: no llama.cpp venv at" in proc.stderr and "setup_llamacpp.sh" in proc.stderr
    assert not (tmp_path / "f.json").exists()


def test_bad_options_are_refused(tmp_path):
    for args, needle in [(["--dtypes", "float33"], "'float33' is not a torch dtype"),
                         (["--dtypes", "float32+int8wo"], "int8wo runs on bfloat16 activations"),
                         (["--concurrency", "0"], "must be >= 1")]:
        proc = bench(*args, "--out", str(tmp_path / "f.json"), timeout=120)
        assert proc.returncode == 2 and needle in proc.stderr, (args, proc.stderr)


@pytest.mark.expected_skip("llama.cpp is built only by benchmarks/setup_llamacpp.sh, never in CI")
def test_rows_beside_llamacpp(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import llamacpp_peer

    missing = llamacpp_peer.missing_reason(llamacpp_peer.DEFAULT_VENV)
    if missing:
        pytest.skip(missing)
    out = tmp_path / "figures.json"
    proc = bench("--n", "2", "--concurrency", "2", "--max-new-tokens", str(BUDGET), "--dtypes", "float32,bfloat16+int8wo",
                 "--threads", "1", "--require-llamacpp", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["llamacpp"]["gguf"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    rows = figures["rows"]
    peer = [r for r in rows if r["engine"] == "llama.cpp"]
    assert [r["mode"] for r in peer] == ["single stream", "2 concurrent"]
    for row in peer:
        # llama.cpp does not count the end-of-sequence token: one token each at the least.
        assert 2 <= row["tokens"] <= 2 * BUDGET, row
    assert peer[0]["ratio"] == pytest.approx(1.0)
    for row in rows:
        assert row["ratio"] == pytest.approx(row["tok_s"] / peer[0]["tok_s"])


def test_breakdown_prints_a_row_per_workload_and_level():
    script = ROOT / "benchmarks" / "executor_breakdown.py"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script), "--dtype", "float32", "--concurrency", "1,2",
                           "--max-new-tokens", "3", "--cprofile", "5"],
                          capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split(" | ") for line in proc.stdout.splitlines() if line.startswith("| free text") or
            line.startswith("| json contract")]
    assert [(r[0].lstrip("| "), r[1]) for r in rows] == [("free text", "1"), ("free text", "2"),
                                                        ("json contract", "1"), ("json contract", "2")]
    for row in rows:
        assert float(row[2]) > 0 and int(row[6]) >= 1, row  # tokens came out of decode steps
        assert row[5].split(" + ")[0] != "0", row  # prompt tokens went through the model
    assert "tottime" in proc.stdout  # the engine thread's profile
    bad = subprocess.run([sys.executable, str(script), "--concurrency", "0"], capture_output=True, text=True,
                         timeout=120, env=env, cwd=ROOT)
    assert bad.returncode == 2 and "--concurrency" in bad.stderr
    bad = subprocess.run([sys.executable, str(script), "--dtype", "float8"], capture_output=True, text=True,
                         timeout=120, env=env, cwd=ROOT)
    assert bad.returncode == 2 and "argument --dtype: invalid choice: 'float8'" in bad.stderr, bad.stderr
    bad = subprocess.run([sys.executable, str(script), "--dtype", "float32", "--quantization", "int4wo"],
                         capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert bad.returncode == 2 and "int4wo runs on bfloat16 activations, not float32" in bad.stderr, bad.stderr
