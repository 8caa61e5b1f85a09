"""Start the servers a gRPC benchmark drives, on loopback, and stop them afterwards.

By default one `corea serve` whose LLM tier runs in the same process (the embedded stand-in
sharing the SLM's weights): the grpc target then differs from the in-process cascade by the
gRPC layer alone. With `separate_llm`, a `corea worker` process is the LLM tier and
`corea serve` reaches it over gRPC: the production topology.
Each server binds port 0 and prints the port it got; nothing else on the machine is assumed free.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READY = re.compile(r"on port (\d+)")


class SpawnError(RuntimeError):
    """A server did not come up; the message has the tail of its log."""


@contextlib.contextmanager
def spawn_servers(setup, progress=print, *, separate_llm: bool = False, timeout_s: float = 300.0):
    """Yields the `corea serve` address (127.0.0.1:port)."""
    env = dict(os.environ, COREA_THREADS=str(setup.threads))
    # The cascade reads its settings from COREA_* variables: the same bounds as the in-process targets.
    for name in ("max_reasoning_chars", "max_answer_chars"):
        value = getattr(setup.options, name)
        if value is not None:
            env[f"COREA_{name.upper()}"] = str(value)
    model = ["--model", setup.model] if setup.model else []
    # serve's in-process LLM runs in these too (bench refuses --llm-dtype/--llm-quantization there)
    model += ["--device", setup.device, "--dtype", setup.dtype, "--quantization", setup.quantization]
    inflight = str(max(setup.levels) + 8)  # the sweep's own load must never be refused
    with tempfile.TemporaryDirectory(prefix="corea-spawn-") as logs, contextlib.ExitStack() as stack:
        if separate_llm:
            llm_model = ["--model", setup.llm_model] if setup.llm_model else []
            llm_model += ["--device", setup.llm_device, "--dtype", setup.llm_dtype, "--quantization", setup.llm_quantization]
            llm_port = stack.enter_context(_server("worker", ["--host", "127.0.0.1", "--port", "0",
                                                                 "--max-inflight", inflight, "--max-batch-size",
                                                                 str(setup.max_batch_size), *llm_model],
                                                   env, Path(logs), progress, timeout_s))
            tier = ["--llm-address", f"127.0.0.1:{llm_port}"]
        else:
            tier = ["--llm-model", setup.llm_model or setup.model or "smollm2-135m"]
        port = stack.enter_context(_server("serve", ["--host", "127.0.0.1", "--port", "0", "--no-metrics",
                                                     "--max-inflight", inflight, *model, *tier],
                                           env, Path(logs), progress, timeout_s))
        yield f"127.0.0.1:{port}"


@contextlib.contextmanager
def _server(command: str, args: list[str], env: dict, logs: Path, progress, timeout_s: float):
    log_path = logs / f"{command}.log"
    argv = [sys.executable, "-m", "corea_engine.cli", command, *args]
    progress(f"starting: corea {command} {' '.join(args)}")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        yield _wait_for_port(proc, f"corea {command}", log_path, timeout_s)
    finally:
        _stop(proc)


def _wait_for_port(proc: subprocess.Popen, name: str, log_path: Path, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = READY.search(log_path.read_text())
        if match:
            return int(match.group(1))
        if proc.poll() is not None:
            raise SpawnError(f"{name} exited with {proc.returncode}:\n{_tail(log_path)}")
        time.sleep(0.2)
    raise SpawnError(f"{name} was not ready after {timeout_s:.0f} s:\n{_tail(log_path)}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM (the server drains in-flight calls), then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text()[-chars:]
