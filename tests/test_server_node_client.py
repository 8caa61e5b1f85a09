"""Another gRPC implementation calls the service from the proto alone: Node's @grpc/grpc-js."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from cascade_servers import corea_server, llm_server, stand_in_llm

NODE_DIR = Path(__file__).parent / "node"


@pytest.fixture(scope="module")
def node_client():
    # `make test` installs node and the packages (scripts/install_node_deps.sh); a skip fails the run.
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not on PATH: run scripts/install_node_deps.sh")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"npm ci failed:\n{done.stderr[-2000:]}"
    return NODE_DIR / "client.js"


def test_node_client_calls_solve_and_solve_stream(slm_executor, node_client, gsm8k_questions):
    llm_executor = stand_in_llm(slm_executor)
    llm = llm_server(llm_executor)
    corea = corea_server(slm_executor, llm.address)
    try:
        out = subprocess.run(["node", str(node_client), corea.address, gsm8k_questions[5]],
                             capture_output=True, text=True, timeout=600)
    finally:
        corea.close()
        llm.close()
        llm_executor.close()
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    solve = lines[0]["response"]
    assert solve["request_id"] == "node-1" and solve["answered_by"] == "TIER_SLM" and solve["mode"] == "ROUTING_MODE_SLM_ONLY"
    assert solve["slm_tokens"]["completion_tokens"] > 0 and 0 <= solve["confidence_expected"] <= 1
    events = lines[1]["events"]
    assert events[-1] == "result" and events.count("result") == 1 and "decision" in events and "slm_token" in events
    assert lines[2] == {"call": "Solve(empty)", "error": "INVALID_ARGUMENT", "details": "question is empty"}
