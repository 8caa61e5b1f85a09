"""`corea demo`: answer a handful of GSM8K questions on the embedded default and print a table."""

from __future__ import annotations

import time

from .common import add_model_args, default_threads


def register(sub) -> None:
    p = sub.add_parser("demo", help="answer a few GSM8K questions and print a table")
    p.add_argument("-n", type=int, default=5, help="how many questions")
    p.add_argument("--contract", default="json")
    add_model_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..contract import build_messages, get_format
    from ..evaluation.datasets import load_gsm8k
    from ..runtime.executor import Request
    from ..runtime.torch_executor import TorchExecutor

    fmt = get_format(args.contract)
    examples = load_gsm8k("test", limit=args.n)
    console = Console()
    with console.status("loading the model"):
        executor = TorchExecutor(args.model, device=args.device, dtype=args.dtype, threads=default_threads())
    table = Table(title=f"GSM8K on {executor.model_name} ({fmt.name} contract)")
    for column in ("question", "answer", "reference", "confidence", "model", "tokens", "latency"):
        table.add_column(column, overflow="fold")
    with executor, console.status(f"answering {len(examples)} questions concurrently"):
        t0 = time.perf_counter()
        streams = [executor.submit(Request(messages=build_messages(e.question, fmt), contract=fmt)) for e in examples]
        results = [s.wait() for s in streams]
        elapsed = time.perf_counter() - t0
    for example, r in zip(examples, results):
        answer = r.parsed.answer if r.parsed else f"({r.parse_error or r.finish_reason})"
        conf = f"{r.confidence.sampled:.1f} / {r.confidence.expected:.2f}" if r.confidence else "-"
        table.add_row(example.question[:80], answer, example.answer, conf, executor.model_name,
                      str(r.completion_tokens), f"{r.latency_s:.1f}s")
    console.print(table)
    tokens = sum(r.completion_tokens for r in results)
    console.print(f"{tokens} tokens in {elapsed:.1f}s ({tokens / elapsed:.0f} tok/s); confidence = sampled / expected")
    return 0
