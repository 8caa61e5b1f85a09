"""End to end: `corea bench` starts a real `corea serve` on loopback, drives it with the Python
load generator and with the C++ client (built here with CMake), and both report the same work.

Tiny sizes: two concurrency levels, two requests each, short bounded outputs. Threshold 1.0
defers every question (the scale tops out at 0.9), so the LLM tier runs too and both clients
must see a deferral rate of exactly 1; threshold 0 defers none.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from corea_engine.bench import cpp_client

LEVELS = [1, 2]
REQUESTS = 2
SMALL = ["--max-reasoning-chars", "24", "--max-answer-chars", "6", "--question-limit", "4"]


@pytest.fixture(scope="module")
def cpp_build_dir(tmp_path_factory):
    reason = cpp_client.missing_toolchain()
    if reason:
        pytest.skip(f"C++ client cannot be built here: {reason}")
    build_dir = tmp_path_factory.mktemp("cpp-build")
    binary = cpp_client.build(build_dir, build_type="None")  # no optimisation: faster to compile
    assert binary.is_file()
    return build_dir


def corea_bench(*args, timeout=1500):
    return subprocess.run([sys.executable, "-m", "corea_engine.cli", "bench", *args],
                          capture_output=True, text=True, timeout=timeout)


def check_level(level, concurrency):
    assert level["concurrency"] == concurrency
    assert level["requests"] == level["ok"] == REQUESTS and level["errors"] == 0, level
    assert level["error_kinds"] == {}
    assert level["slm_tokens"] > 0 and level["requests_per_s"] > 0
    assert level["latency_p50_ms"] <= level["latency_p90_ms"] <= level["latency_p99_ms"]
    # The decision comes before the last event of a stream.
    assert 0 < level["ttd_p50_ms"] <= level["latency_p99_ms"]


def test_grpc_python_and_cpp_clients_agree(tmp_path, cpp_build_dir):
    out = tmp_path / "out"
    proc = corea_bench("--target", "grpc", "--spawn", "--cpp", "--cpp-build-dir", str(cpp_build_dir),
                       "--concurrency", ",".join(map(str, LEVELS)), "--requests", str(REQUESTS),
                       "--threshold", "1.0", "--out", str(out), *SMALL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = json.loads((out / "bench.json").read_text())
    assert [(r["target"], r["client"]) for r in reports] == [("grpc", "python"), ("grpc", "cpp")]
    for report in reports:
        assert [lv["concurrency"] for lv in report["levels"]] == LEVELS
        for level, concurrency in zip(report["levels"], LEVELS):
            check_level(level, concurrency)
            assert level["deferral_rate"] == 1.0 and level["deferred"] == REQUESTS
            assert level["llm_tokens"] > 0, "every deferred question is answered by the LLM tier"
    python, cpp = (r["levels"] for r in reports)
    assert [lv["ok"] for lv in python] == [lv["ok"] for lv in cpp]
    # Greedy decoding on the same questions: the clients asked for the same work.
    assert sum(lv["slm_tokens"] for lv in python) == pytest.approx(sum(lv["slm_tokens"] for lv in cpp), rel=0.25)
    markdown = (out / "bench.md").read_text()
    assert "grpc (python client)" in markdown and "grpc (cpp client)" in markdown
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 2 | 2 | 0 |" in proc.stdout  # the table printed: concurrency 2, 2 ok, 0 errors


def test_cpp_client_refuses_bad_arguments(cpp_build_dir, tmp_path):
    binary = cpp_build_dir / "corea_load"
    questions = tmp_path / "q.txt"
    questions.write_text("What is 2 + 2?\n")
    for args, needle in [(["--questions", str(questions), "--concurrency", "0"], "--concurrency"),
                         (["--concurrency", "1"], "--questions is required"),
                         (["--questions", str(tmp_path / "missing.txt")], "cannot read question file"),
                         (["--questions", str(questions), "--mode", "fast"], "--mode")]:
        proc = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, (args, proc.stderr)
        assert needle in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
