"""`corea demo`: a few GSM8K questions through the cascade over gRPC, printed as a table.

Starts two servers on loopback in this process: the stand-in LLM tier (a worker serving
sglang.grpc.scheduler.SglangScheduler over the embedded default model, sharing the SLM's weights)
and the cascade (corea.v1.Corea) that
escalates to it through the generated gRPC stub; then asks the questions concurrently with
the gRPC client, and the first one once more through the same server's OpenAI-compatible HTTP API
(the openai SDK). The stand-in LLM is the same 135M model: the demo shows the machinery
(confidence, deferral, tiers, tokens, latency), not a stronger second model. With --address it
asks a running `corea serve` instead (--tls-ca, --tls-cert/--tls-key, --token-file when secured).
"""

from __future__ import annotations

import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from .common import add_model_args, default_threads
from .security_args import add_client_args, connect, uses_client_security


def register(sub) -> None:
    p = sub.add_parser("demo", help="answer a few GSM8K questions through the cascade over gRPC, print a table")
    p.add_argument("-n", type=int, default=5, help="how many questions")
    p.add_argument("--contract", default="json")
    p.add_argument("--threshold", type=float, default=0.65, help="defer when the SLM's confidence is below this")
    p.add_argument("--max-reasoning-chars", type=int, default=160,
                   help="bound on the reasoning field (speed; the servers the demo starts)")
    p.add_argument("--address", default=None,
                   help="ask a running `corea serve` instead of starting servers here (it uses its own bounds)")
    add_model_args(p)
    add_client_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..cascade import CascadeConfig
    from ..cascade_config import ConfigError
    from ..cli import CommandError
    from ..evaluation.datasets import load_gsm8k

    try:
        config = CascadeConfig(threshold=args.threshold, contract=args.contract, max_reasoning_chars=args.max_reasoning_chars).validate()
    except ConfigError as err:
        raise CommandError(str(err)) from None
    if uses_client_security(args) and not args.address:
        raise CommandError("--tls-* and --token-file are for reaching a server: give --address too")
    examples = load_gsm8k("test", limit=args.n)
    # a log file gets rows, not rich's 80-column default (COLUMNS, when set, still decides)
    console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160)
    if args.address:
        with console.status(f"{len(examples)} questions -> corea.v1.Corea on {args.address}"), connect(args) as client:
            results, elapsed = _ask(client, examples, config)
        models = f"SLM: {results[0].slm_model or '-'}; LLM: {results[0].llm_model or '-'}" if results else ""
        where, http_line = f"the server at {args.address}", ""
    else:
        results, elapsed, models, http_line = _run_local(args, examples, config, console)
        where = "gRPC"

    table = Table(title=f"GSM8K through the cascade over {where} ({config.contract} contract, threshold {config.threshold:g})")
    # the short columns never wrap ("confiden|ce" on an 80-column terminal); the text ones take the rest
    for column in ("question", "answer", "reference", "confidence", "answered by", "tokens\nslm/llm", "latency"):
        table.add_column(column, overflow="fold", no_wrap=column not in ("question", "answer", "answered by"))
    for example, r in zip(examples, results):
        # cut, not rounded, to three places: a deferred 0.6475 must not read as the threshold 0.65
        conf = (f"{r.confidence_sampled:.1f} / {math.floor(r.confidence_expected * 1000) / 1000:.3f}"
                if r.confidence_expected is not None else "-")
        tier = r.answered_by.upper() + (" (deferred)" if r.deferred else "")
        if r.degraded:
            tier += f" DEGRADED: {r.degraded_reason}"
        table.add_row(example.question[:60], r.answer or "-", example.answer, conf, tier,
                      f"{r.slm_completion_tokens}/{r.llm_completion_tokens}", f"{r.latency_ms / 1000:.1f}s")
    console.print(table)
    console.print(models)
    deferred = sum(r.deferred for r in results)
    cost, alone = sum(r.cost for r in results), sum(r.llm_only_cost for r in results)
    console.print(f"{len(results)} questions in {elapsed:.1f}s; {deferred} deferred to the LLM tier; "
                  f"cost {cost:.5f} vs {alone:.5f} for the LLM alone; confidence = sampled / expected, "
                  f"{_deciding(results, config)} decides", soft_wrap=True)
    if http_line:
        console.print(http_line, soft_wrap=True)
    return 0


def _deciding(results, config) -> str:
    """Which confidence the server's policy read: a server may be set otherwise than this command."""
    source = next((r.confidence_source for r in results if r.confidence_source), config.confidence_source)
    calibrated = any(r.confidence_calibrated is not None for r in results)
    return f"the {source} one{' (after the served calibrator)' if calibrated else ''}"


def _ask(client, examples, config):
    """Every question at once through the client: (results in order, seconds)."""
    from ..cascade import SolveRequest

    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(examples) or 1) as pool:
        results = list(pool.map(lambda e: client.solve(SolveRequest(e.question, threshold=config.threshold,
                                                                    contract=config.contract)), examples))
    return results, time.perf_counter() - t0


def _run_local(args, examples, config, console):
    """Start the stand-in LLM tier and the cascade (gRPC + HTTP) on loopback here, ask, stop:
    (results, seconds, models line, the HTTP call's line)."""
    from openai import OpenAI

    from ..cascade import Cascade
    from ..client import CoreaClient
    from ..escalation.grpc_llm import GrpcLLM
    from ..models import resolve_model
    from ..runtime.torch_executor import TorchExecutor
    from ..server.app import build_server
    from ..server.background import ServerThread
    from ..server.worker_service import WorkerService

    with console.status("loading the model"):
        slm = TorchExecutor(args.model, device=args.device, dtype=args.dtype, quantization=args.quantization,
                            threads=default_threads())
        llm = TorchExecutor(model_and_tokenizer=(slm.model, slm.tokenizer))  # the stand-in shares the weights
        llm.model_name = f"{slm.model_name} (stand-in LLM)"
    servers = []
    try:
        worker = WorkerService(llm, model_path=resolve_model(args.model).path)  # GetTokenizer sends its files
        llm_server = ServerThread(lambda: build_server(worker=worker, host="127.0.0.1")).start()
        servers.append(llm_server)
        cascade = Cascade(slm, GrpcLLM(llm_server.address), config)
        corea_server = ServerThread(lambda: build_server(cascade, host="127.0.0.1", http_port=0)).start()
        servers.append(corea_server)
        with console.status(f"{len(examples)} questions -> corea.v1.Corea on {corea_server.address} "
                            f"(LLM tier: corea worker on {llm_server.address})"), CoreaClient(corea_server.address) as client:
            results, elapsed = _ask(client, examples, config)
        http_url = f"http://127.0.0.1:{corea_server.server.http_port}/v1"
        with console.status(f"the first question again -> POST {http_url}/chat/completions (openai SDK)"), \
                OpenAI(base_url=http_url, api_key="unused", max_retries=0) as sdk:
            raw = sdk.chat.completions.with_raw_response.create(
                model="corea", messages=[{"role": "user", "content": examples[0].question}],
                extra_body={"threshold": config.threshold, "contract": config.contract})
        reply, headers = raw.parse(), raw.headers
        http_line = (f"over HTTP (OpenAI API, {http_url}): answer {reply.choices[0].message.content!r}, "
                     f"x-corea-tier {headers['x-corea-tier']}, x-corea-confidence {headers['x-corea-confidence']}, "
                     f"{reply.usage.total_tokens} tokens in both tiers")
    finally:
        for server in reversed(servers):
            server.close()
        llm.close()
        slm.close()
    models = f"SLM: {slm.model_name}; LLM: {llm.model_name} over gRPC (sglang.grpc.scheduler.SglangScheduler)"
    return results, elapsed, models, http_line
