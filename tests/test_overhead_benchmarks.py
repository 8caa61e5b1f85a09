"""The overhead benchmarks' scripts run end to end (tiny counts): their own checks hold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_remote_overhead_instant_runs_to_the_confidence_on_both_paths(tmp_path):
    """A budget past the confidence: the in-process stand-in stops there as the remote path does,
    so the script's equal-ids check holds."""
    out = tmp_path / "figures.json"
    run = subprocess.run([sys.executable, str(BENCHMARKS / "remote_overhead.py"), "--instant", "--max-new-tokens", "64",
                          "-n", "2", "--warmup", "0", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["pairs"] == 2 and figures["max_new_tokens"] == 64 and figures["remote_p50_ms"] > 0
