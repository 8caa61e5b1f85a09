"""Runs the sweep on each requested layer and returns one report per target and client."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import report
from .loadgen import sweep
from .targets import CascadeTarget, ExecutorTarget, GrpcTarget, RequestOptions

DEFAULT_REQUESTS = 32


@dataclass
class BenchSetup:
    levels: list[int]
    questions: list[str]
    options: RequestOptions = field(default_factory=RequestOptions)
    requests: int | None = None  # per level; None with seconds None: DEFAULT_REQUESTS
    seconds: float | None = None
    warmup: int = 1
    question_source: str = "gsm8k"
    address: str = "127.0.0.1:50051"
    spawn: bool = False
    spawn_llm_server: bool = False  # spawn `corea worker` too, reached over gRPC
    cpp: bool = False
    cpp_build_dir: str | None = None
    model: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    quantization: str = "none"
    llm_model: str | None = None
    llm_device: str = "cpu"
    llm_dtype: str = "float32"
    llm_quantization: str = "none"
    max_batch_size: int = 16
    threads: int = 1
    client_security: dict = field(default_factory=dict)  # tls, token: reaching a secured --address

    def __post_init__(self):
        if self.requests is None and self.seconds is None:
            self.requests = DEFAULT_REQUESTS

    @classmethod
    def from_args(cls, args, *, levels, questions, threads, client_security: dict | None = None) -> "BenchSetup":
        options = RequestOptions(contract=args.contract, max_new_tokens=args.max_new_tokens,
                                 threshold=args.threshold, mode=args.mode, timeout_s=args.timeout,
                                 max_reasoning_chars=args.max_reasoning_chars, max_answer_chars=args.max_answer_chars)
        return cls(levels=levels, questions=questions, options=options, requests=args.requests,
                   seconds=args.seconds, warmup=args.warmup, question_source=args.questions,
                   address=args.address, spawn=args.spawn, spawn_llm_server=args.spawn_llm_server, cpp=args.cpp, cpp_build_dir=args.cpp_build_dir,
                   model=args.model, device=args.device, dtype=args.dtype, quantization=args.quantization,
                   llm_model=args.llm_model, llm_device=args.llm_device, llm_dtype=args.llm_dtype,
                   llm_quantization=args.llm_quantization, max_batch_size=args.max_batch_size,
                   threads=threads, client_security=client_security or {})

    def config(self) -> dict:
        o = self.options
        return {"requests_per_level": self.requests, "seconds_per_level": self.seconds,
                "questions": f"{self.question_source}[:{len(self.questions)}]", "contract": o.contract,
                "max_new_tokens": o.max_new_tokens, "max_reasoning_chars": o.max_reasoning_chars,
                "max_answer_chars": o.max_answer_chars, "threshold": o.threshold, "mode": o.mode,
                "model": self.model or "smollm2-135m", "llm_model": self.llm_model or "smollm2-135m (stand-in)",
                "max_batch_size": self.max_batch_size, "threads": self.threads}


class _Reports(list):
    """The reports so far; `on_change` sees the list after every addition (partial results survive)."""

    def __init__(self, on_change):
        super().__init__()
        self.on_change = on_change

    def append(self, item):
        super().append(item)
        self.on_change(self)

    def extend(self, items):
        for item in items:
            self.append(item)


def run_targets(targets: list[str], setup: BenchSetup, progress=print, on_report=lambda reports: None) -> list[dict]:
    reports = _Reports(on_report)
    executors = _InProcessModels(setup)
    try:
        for i, name in enumerate(targets):
            if name == "executor":
                slm = executors.slm()
                reports.append(_sweep(lambda: ExecutorTarget(slm, setup.options), setup, progress))
            elif name == "cascade":
                cascade = executors.cascade()
                reports.append(_sweep(lambda: CascadeTarget(cascade, setup.options), setup, progress))
            elif name == "grpc":
                if not any(t in ("executor", "cascade") for t in targets[i + 1:]):
                    executors.close()  # free the cores and memory for the servers
                reports.extend(_grpc(setup, progress))
            else:
                raise ValueError(f"unknown target {name!r}")
    finally:
        executors.close()
    return list(reports)


def _sweep(make_target, setup: BenchSetup, progress, **extra) -> dict:
    async def main():
        target = make_target()
        try:
            if isinstance(target, GrpcTarget):
                await target.wait_ready()
            levels = await sweep(target, setup.questions, setup.levels, requests=setup.requests,
                                 seconds=setup.seconds, warmup=setup.warmup,
                                 on_level=lambda lv: progress(_line(target.name, "python", lv)))
            return target.name, levels
        finally:
            await target.aclose()

    name, levels = asyncio.run(main())
    return {"target": name, "client": "python", **extra, "config": setup.config(), "machine": report.machine(),
            "levels": levels}


def _grpc(setup: BenchSetup, progress) -> list[dict]:
    from . import cpp_client
    from .questions import write_question_file

    binary = None
    if setup.cpp:  # build first: a compile error should not cost a whole Python sweep
        progress("building the C++ client (cmake)")
        binary = cpp_client.build(setup.cpp_build_dir or cpp_client.DEFAULT_BUILD_DIR)
    with contextlib.ExitStack() as stack:
        address = setup.address
        if setup.spawn:
            from .spawn import spawn_servers

            address = stack.enter_context(spawn_servers(setup, progress, separate_llm=setup.spawn_llm_server))
        reports = [_sweep(lambda: GrpcTarget(address, setup.options, **setup.client_security), setup, progress, address=address)]
        if binary is not None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="corea-bench-")))
            question_file = write_question_file(setup.questions, folder / "questions.txt")
            cpp = cpp_client.run(binary, address, question_file, setup.levels, setup.options,
                                 requests=setup.requests, seconds=setup.seconds, warmup=setup.warmup)
            for level in cpp["levels"]:
                progress(_line("grpc", "cpp", level))
            reports.append({**cpp, "config": setup.config(), "machine": report.machine()})
    return reports


class _InProcessModels:
    """The executors the in-process targets share, loaded on first use."""

    def __init__(self, setup: BenchSetup):
        self.setup = setup
        self._slm = self._llm = None

    def slm(self):
        from ..runtime.torch_executor import TorchExecutor

        if self._slm is None:
            s = self.setup
            self._slm = TorchExecutor(s.model, device=s.device, dtype=s.dtype, quantization=s.quantization,
                                      max_batch_size=s.max_batch_size, threads=s.threads)
        return self._slm

    def cascade(self):
        from ..cascade import Cascade, CascadeConfig
        from ..escalation.local_llm import ExecutorLLM
        from ..runtime.torch_executor import TorchExecutor

        s, slm = self.setup, self.slm()
        if self._llm is None:
            if s.llm_model is None or s.llm_model == s.model:  # the stand-in LLM shares the SLM's weights
                self._llm = TorchExecutor(model_and_tokenizer=(slm.model, slm.tokenizer), quantization=slm.quantization,
                                          max_batch_size=s.max_batch_size)
            else:
                self._llm = TorchExecutor(s.llm_model, device=s.llm_device, dtype=s.llm_dtype,
                                          quantization=s.llm_quantization, max_batch_size=s.max_batch_size)
        config = CascadeConfig(contract=s.options.contract, max_reasoning_chars=s.options.max_reasoning_chars,
                               max_answer_chars=s.options.max_answer_chars)
        return Cascade(slm, ExecutorLLM(self._llm), config)

    def close(self) -> None:
        for executor in (self._llm, self._slm):
            if executor is not None:
                executor.close()
        self._slm = self._llm = None


def _line(target: str, client: str, level: dict) -> str:
    def f(value, spec):
        return "-" if value is None else format(value, spec)

    return (f"{target:8s} {client:6s} c={level['concurrency']:<3d} ok={level['ok']:<4d} err={level['errors']:<3d} "
            f"req/s={f(level['requests_per_s'], '.2f')} p50={f(level['latency_p50_ms'], '.0f')}ms "
            f"p99={f(level['latency_p99_ms'], '.0f')}ms ttd_p50={f(level['ttd_p50_ms'], '.0f')}ms "
            f"deferred={f(level['deferral_rate'], '.0%')}")
