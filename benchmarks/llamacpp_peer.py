"""llama.cpp as the CPU peer of the embedded runtime: llama-cpp-python's OpenAI-compatible server,
run from the venv that benchmarks/setup_llamacpp.sh builds, on loopback, for bench_executor.py.

Scripts import it by putting this folder on sys.path (they run as `python benchmarks/<name>.py`).
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai

from latency import free_port

DEFAULT_VENV = Path(__file__).resolve().parent / ".llamacpp-venv"
SETUP = "nice -n 19 benchmarks/setup_llamacpp.sh"
MODEL_ALIAS = "smollm2"


def missing_reason(venv: Path) -> str | None:
    """Why the server cannot run from `venv` (None when it can)."""
    python = venv / "bin" / "python"
    if not python.is_file():
        return f"no llama.cpp venv at {venv} (build it with `{SETUP}`)"
    probe = subprocess.run([str(python), "-c", "import llama_cpp.server, llama_cpp; print(llama_cpp.__version__)"],
                           capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        return f"{venv} has no working llama-cpp-python[server]: {probe.stderr.strip().splitlines()[-1:]}"
    return None


class LlamaCppServer:
    """`python -m llama_cpp.server` on 127.0.0.1 serving one GGUF; a context manager.

    threads: llama.cpp's decode and batch threads. Its server evaluates one request at a time
    (concurrent requests queue on one lock), which is what a user of it gets.
    """

    def __init__(self, venv: Path, gguf: Path, *, threads: int, n_ctx: int = 2048, start_timeout_s: float = 300):
        self.venv, self.gguf, self.threads, self.n_ctx = venv, gguf, threads, n_ctx
        self.start_timeout_s = start_timeout_s
        self.version = subprocess.run([str(venv / "bin" / "python"), "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                                      capture_output=True, text=True, check=True).stdout.strip()
        self._proc: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="llamacpp-server-", suffix=".log", delete=False)
        self.port = free_port()
        self.client = openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="none",
                                    timeout=600, max_retries=0)

    def __enter__(self) -> "LlamaCppServer":
        self._proc = subprocess.Popen(
            [str(self.venv / "bin" / "python"), "-m", "llama_cpp.server", "--model", str(self.gguf),
             "--model_alias", MODEL_ALIAS, "--host", "127.0.0.1", "--port", str(self.port),
             "--n_ctx", str(self.n_ctx), "--n_threads", str(self.threads), "--n_threads_batch", str(self.threads)],
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/v1/models", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"llama.cpp server not ready after {self.start_timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(0.5)

    def __exit__(self, *exc) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()

    def log_tail(self, chars: int = 3000) -> str:
        return Path(self._log.name).read_text(errors="replace")[-chars:]

    def complete(self, prompt: str, max_tokens: int):
        """One greedy completion of `prompt` (text, already chat-templated): the OpenAI Completion.

        Temperature 0 is llama.cpp's greedy sampler; its own repeat penalty (1.1 by default in
        llama-cpp-python) is turned off so every engine picks the argmax of the same logits.
        """
        return self.client.completions.create(
            model=MODEL_ALIAS, prompt=prompt, max_tokens=max_tokens, temperature=0.0, top_p=1.0,
            extra_body={"repeat_penalty": 1.0})

    def run(self, prompts: list[str], max_tokens: int, concurrent: bool) -> tuple[int, int, float]:
        """(completion tokens as the server reports them, prompt tokens, wall seconds) for all prompts,
        one after another or all submitted at once."""
        t0 = time.perf_counter()
        if concurrent:
            with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
                done = list(pool.map(lambda p: self.complete(p, max_tokens), prompts))
        else:
            done = [self.complete(p, max_tokens) for p in prompts]
        elapsed = time.perf_counter() - t0
        return (sum(c.usage.completion_tokens for c in done), sum(c.usage.prompt_tokens for c in done), elapsed)
