"""Arguments shared by commands that load a model."""

from __future__ import annotations

import os

from ..runtime.dtypes import DTYPES, QUANTIZATIONS

BACKENDS = ("torch", "sglang")


def bounded(kind: type, low: float, high: float):
    """An argparse type: a finite `kind` (int or float) in [low, high], refused at start-up with the flag's name.

    Also applied to flag defaults that come from the environment (argparse converts string defaults).
    """
    import argparse
    import math

    def parse(text):
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"must be in [{low:.10g}, {high:.10g}], got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


PORT = bounded(int, 0, 65535)  # 0: any free port
COUNT = bounded(int, 1, 1_000_000)
SECONDS = bounded(float, 0, 86_400)


def add_model_args(parser, *, prefix: str = "", default_model: str | None = None) -> None:
    p = f"--{prefix}" if prefix else "--"
    parser.add_argument(f"{p}model", default=default_model, help="model: 'smollm2-135m' (embedded default) or a local folder")
    parser.add_argument(f"{p}device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument(f"{p}dtype", default="float32", choices=DTYPES,
                        help="auto: bfloat16 where the device computes it natively (AVX512-BF16/AMX, CUDA), else "
                             "float32 (bf16 readings vary with the batch: a request alone and batched differ by ~0.02)")
    parser.add_argument(f"{p}quantization", default="none", choices=QUANTIZATIONS,
                        help="torch backend, CPU, bfloat16 activations (--dtype bfloat16, or auto on AVX512-BF16/AMX): "
                             "int8wo / int4wo store the decoder's linear "
                             "weights as int8 per output channel / int4 in groups of 32 (weight-only; int4wo gives back "
                             "the bundled GGUF's Q4_1 weights)")
    parser.add_argument(f"{p}backend", default="torch", choices=BACKENDS,
                        help="runtime: torch (embedded, CPU or CUDA) or sglang (GPU; needs the sglang extra)")
    # SGLang engine options, passed through to sglang.Engine (ignored by the torch backend).
    parser.add_argument(f"{p}tp-size", type=bounded(int, 1, 1024), default=None, help="sglang: tensor-parallel GPUs")
    parser.add_argument(f"{p}dp-size", type=bounded(int, 1, 1024), default=None, help="sglang: data-parallel replicas")
    parser.add_argument(f"{p}mem-fraction-static", type=bounded(float, 0.01, 1.0), default=None,
                        help="sglang: GPU memory share for weights + KV cache")
    parser.add_argument(f"{p}max-running-requests", type=COUNT, default=None, help="sglang: concurrent requests cap")
    parser.add_argument(f"{p}load-format", default=None, help="sglang: weight loading, e.g. 'dummy' (random weights, benchmarks)")


def make_executor(args, *, prefix: str = "", **torch_options):
    """The Executor that the model arguments (with `prefix`) ask for.

    torch_options go to TorchExecutor (threads, max_batch_size, ...); the sglang backend takes
    the model folder and the SGLang engine options above.
    """

    def arg(name: str):
        return getattr(args, (prefix + name).replace("-", "_"), None)

    if arg("backend") == "sglang":
        from ..models import resolve_model
        from ..runtime.sglang_executor import SglangExecutor

        names = ("tp_size", "dp_size", "mem_fraction_static", "max_running_requests", "load_format")
        options = {name: arg(name) for name in names if arg(name) is not None}
        if (arg("quantization") or "none") != "none":
            from ..runtime.executor import ExecutorError

            raise ExecutorError("--quantization is a torch backend setting (SGLang takes its own)")
        return SglangExecutor(str(resolve_model(arg("model")).path), dtype=arg("dtype"), **options)
    from ..runtime.torch_executor import TorchExecutor

    return TorchExecutor(arg("model"), device=arg("device") or "cpu", dtype=arg("dtype") or "float32",
                         quantization=arg("quantization") or "none", **torch_options)


def default_threads() -> int:
    """Torch intra-op threads: COREA_THREADS, else every core (one engine per process).

    Measured 2026-11-30 on 2 shared cores (issue #14 report): with one busy neighbour process, 2
    threads still decoded about 2x faster than 1 (bf16 and fp32, single and 8 concurrent);
    only under heavy oversubscription (load ~8) did 2 threads collapse (5-10x slower a step)."""
    import argparse

    from ..cli import CommandError

    try:
        return bounded(int, 1, 4096)(os.environ.get("COREA_THREADS", os.cpu_count() or 1))
    except argparse.ArgumentTypeError as err:
        raise CommandError(f"COREA_THREADS {err}") from None
