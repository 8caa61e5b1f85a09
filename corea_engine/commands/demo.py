"""`corea demo`: a few GSM8K questions through the cascade over gRPC, printed as a table.

Starts two servers on loopback in this process: the stand-in LLM tier (corea.v1.LLM over the
embedded default model, sharing the SLM's weights) and the cascade (corea.v1.Corea) that
escalates to it through the generated gRPC stub; then asks the questions concurrently with
the gRPC client, and the first one once more through the same server's OpenAI-compatible HTTP API
(the openai SDK). The stand-in LLM is the same 135M model: the demo shows the machinery
(confidence, deferral, tiers, tokens, latency), not a stronger second model.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from .common import add_model_args, default_threads


def register(sub) -> None:
    p = sub.add_parser("demo", help="answer a few GSM8K questions through the cascade over gRPC, print a table")
    p.add_argument("-n", type=int, default=5, help="how many questions")
    p.add_argument("--contract", default="json")
    p.add_argument("--threshold", type=float, default=0.65, help="defer when the SLM's confidence is below this")
    p.add_argument("--max-reasoning-chars", type=int, default=160, help="bound on the reasoning field (speed)")
    add_model_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from openai import OpenAI
    from rich.console import Console
    from rich.table import Table

    from ..cascade import Cascade, CascadeConfig, SolveRequest
    from ..cascade_config import ConfigError
    from ..cli import CommandError
    from ..client import CoreaClient
    from ..escalation.grpc_llm import GrpcLLM
    from ..evaluation.datasets import load_gsm8k
    from ..runtime.torch_executor import TorchExecutor
    from ..server.app import build_server
    from ..server.background import ServerThread

    try:
        config = CascadeConfig(threshold=args.threshold, contract=args.contract, max_reasoning_chars=args.max_reasoning_chars).validate()
    except ConfigError as err:
        raise CommandError(str(err)) from None
    examples = load_gsm8k("test", limit=args.n)
    console = Console()
    with console.status("loading the model"):
        slm = TorchExecutor(args.model, device=args.device, dtype=args.dtype, threads=default_threads())
        llm = TorchExecutor(model_and_tokenizer=(slm.model, slm.tokenizer))  # the stand-in shares the weights
        llm.model_name = f"{slm.model_name} (stand-in LLM)"
    servers = []
    try:
        llm_server = ServerThread(lambda: build_server(llm_executor=llm, host="127.0.0.1")).start()
        servers.append(llm_server)
        cascade = Cascade(slm, GrpcLLM(llm_server.address), config)
        corea_server = ServerThread(lambda: build_server(cascade, host="127.0.0.1", http_port=0)).start()
        servers.append(corea_server)
        with console.status(f"{len(examples)} questions -> corea.v1.Corea on {corea_server.address} "
                            f"(LLM tier: corea.v1.LLM on {llm_server.address})"):
            t0 = time.perf_counter()
            with CoreaClient(corea_server.address) as client, ThreadPoolExecutor(len(examples) or 1) as pool:
                results = list(pool.map(lambda e: client.solve(SolveRequest(e.question)), examples))
            elapsed = time.perf_counter() - t0
        http_url = f"http://127.0.0.1:{corea_server.server.http_port}/v1"
        with console.status(f"the first question again -> POST {http_url}/chat/completions (openai SDK)"), \
                OpenAI(base_url=http_url, api_key="unused", max_retries=0) as sdk:
            raw = sdk.chat.completions.with_raw_response.create(
                model="corea", messages=[{"role": "user", "content": examples[0].question}])
    finally:
        for server in reversed(servers):
            server.close()
        llm.close()
        slm.close()

    table = Table(title=f"GSM8K through the cascade over gRPC ({config.contract} contract, threshold {config.threshold:g})")
    for column in ("question", "answer", "reference", "confidence", "answered by", "tokens slm/llm", "latency"):
        table.add_column(column, overflow="fold")
    for example, r in zip(examples, results):
        conf = f"{r.confidence_sampled:.1f} / {r.confidence_expected:.2f}" if r.confidence_expected is not None else "-"
        tier = r.answered_by.upper() + (" (deferred)" if r.deferred else "")
        if r.degraded:
            tier += f" DEGRADED: {r.degraded_reason}"
        table.add_row(example.question[:60], r.answer or "-", example.answer, conf, tier,
                      f"{r.slm_completion_tokens}/{r.llm_completion_tokens}", f"{r.latency_ms / 1000:.1f}s")
    console.print(table)
    console.print(f"SLM: {slm.model_name}; LLM: {llm.model_name} over gRPC (corea.v1.LLM)")
    deferred = sum(r.deferred for r in results)
    cost, alone = sum(r.cost for r in results), sum(r.llm_only_cost for r in results)
    console.print(f"{len(results)} questions in {elapsed:.1f}s; {deferred} deferred to the LLM tier; "
                  f"cost {cost:.5f} vs {alone:.5f} for the LLM alone; confidence = sampled / expected")
    reply, headers = raw.parse(), raw.headers
    console.print(f"over HTTP (OpenAI API, {http_url}): answer {reply.choices[0].message.content!r}, "
                  f"x-corea-tier {headers['x-corea-tier']}, x-corea-confidence {headers['x-corea-confidence']}, "
                  f"{reply.usage.total_tokens} tokens in both tiers")
    return 0
