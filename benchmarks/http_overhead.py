"""HTTP overhead: what the OpenAI-compatible front adds per request, over the in-process cascade and over gRPC.

    python benchmarks/http_overhead.py                 # instant stand-in SLM (isolates the transports)
    python benchmarks/http_overhead.py --real -n 30    # the real SmolLM2, slm_only, 4 new tokens

One server process holds one cascade and serves it on both transports (what `corea serve --port P
--http-port Q` builds); the clients run in this process, as a user's would (a server thread in the
client's process would compete with it for the GIL: that doubled the spread). The same question
goes, in alternating blocks per round (so drift in machine load hits every path alike), through: `await cascade.solve(req)` in this process; Solve over loopback gRPC
(generated stub); POST /v1/chat/completions over loopback HTTP/1.1 with a keep-alive httpx client
(the request's JSON -> pydantic -> SolveRequest -> cascade -> chat.completion JSON + headers); and
the same through the openai SDK (which adds its own parsing into its types). p50 and p99 per path;
"added" is the difference of the p50s, and per round as a check on its spread.

The stand-in is latency.InstantExecutor (grpc_overhead.py's too): a real Executor answering at once
with a fixed contract-shaped text, so everything but the model runs.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import statistics
import sys

import grpc
import httpx
import openai

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from latency import InstantExecutor, block_parser, load_average, percentile, timed, timed_async, write_figures  # noqa: E402

from corea_engine.cascade import Cascade, CascadeConfig, SolveRequest  # noqa: E402
from corea_engine.protos import corea_pb2, corea_pb2_grpc  # noqa: E402
from corea_engine.server.app import build_server  # noqa: E402
from corea_engine.server.background import ServerThread  # noqa: E402

PATHS = ("in_process", "grpc", "http", "openai_sdk")


def make_cascade(real: bool, max_new_tokens: int) -> Cascade:
    config = CascadeConfig(mode="slm_only", contract="json", max_new_tokens=max_new_tokens if real else None)
    if not real:
        return Cascade(InstantExecutor(), None, config)
    import torch

    from corea_engine.runtime.torch_executor import TorchExecutor

    torch.set_num_threads(1)
    return Cascade(TorchExecutor(threads=1), None, config)


def serve(real: bool, max_new_tokens: int, ports, stop) -> None:
    """The server process: gRPC and HTTP on one cascade until `stop` is set."""
    cascade = make_cascade(real, max_new_tokens)
    server = ServerThread(lambda: build_server(cascade, host="127.0.0.1", http_port=0)).start()
    ports.put((server.port, server.server.http_port))
    stop.wait()
    server.close()
    if real:
        cascade.slm.close()


def main(argv=None) -> int:
    ap = block_parser(__doc__, warmup=50, real_help="the real SmolLM2 (slm_only, --max-new-tokens) instead of the stand-in")
    args = ap.parse_args(argv)

    spawn = multiprocessing.get_context("spawn")
    ports, stop = spawn.Queue(), spawn.Event()
    child = spawn.Process(target=serve, args=(args.real, args.max_new_tokens, ports, stop), daemon=True)
    child.start()
    local = make_cascade(args.real, args.max_new_tokens)
    grpc_port, http_port = ports.get(timeout=600)
    base = f"http://127.0.0.1:{http_port}"
    question = "Tom has 3 apples and buys 5 more. How many apples does he have?"
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    stub = corea_pb2_grpc.CoreaStub(channel)
    grpc_request = corea_pb2.SolveRequest(question=question)
    http = httpx.Client(base_url=base, timeout=120)
    body = {"model": "corea", "messages": [{"role": "user", "content": question}]}
    sdk = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)

    def http_call():
        r = http.post("/v1/chat/completions", json=body)
        r.raise_for_status()
        return r.json()["choices"][0]["message"]["content"]

    calls = {
        "grpc": lambda: stub.Solve(grpc_request, timeout=120).answer,
        "http": http_call,
        "openai_sdk": lambda: sdk.chat.completions.create(**body).choices[0].message.content,
    }

    def timed_local(count):
        return asyncio.run(timed_async(lambda: local.solve(SolveRequest(question)), count))

    try:
        answer = asyncio.run(local.solve(SolveRequest(question))).answer
        assert all(call() == answer for call in calls.values()), "the paths disagree on the answer"
        for call in calls.values():
            timed(call, args.warmup)
        timed_local(args.warmup)
        samples = {path: [] for path in PATHS}
        per_round = {"http_over_in_process": [], "http_over_grpc": []}
        for _ in range(args.rounds):
            block = {"in_process": timed_local(args.n)}
            for path, call in calls.items():
                block[path] = timed(call, args.n)
            for path in PATHS:
                samples[path] += block[path]
            p50 = {path: statistics.median(block[path]) for path in PATHS}
            per_round["http_over_in_process"].append(p50["http"] - p50["in_process"])
            per_round["http_over_grpc"].append(p50["http"] - p50["grpc"])
    finally:
        http.close()
        sdk.close()
        channel.close()
        stop.set()
        child.join(timeout=60)
        if args.real:
            local.slm.close()

    load = load_average()
    p50 = {path: statistics.median(samples[path]) for path in PATHS}
    p99 = {path: percentile(samples[path], 0.99) for path in PATHS}
    figures = {
        "slm": f"SmolLM2-135M (slm_only, {args.max_new_tokens} new tokens)" if args.real else "instant stand-in",
        "requests_per_path": len(samples["in_process"]), "rounds": args.rounds, "cpus": os.cpu_count(),
        "load_average_1min": load,
        **{f"{path}_p50_ms": p50[path] for path in PATHS}, **{f"{path}_p99_ms": p99[path] for path in PATHS},
        "http_over_in_process_p50_ms": p50["http"] - p50["in_process"],
        "http_over_grpc_p50_ms": p50["http"] - p50["grpc"],
        "http_over_in_process_p99_ms": p99["http"] - p99["in_process"],
        "http_over_grpc_p99_ms": p99["http"] - p99["grpc"],
        "per_round_p50_ms": per_round,
    }
    print(f"HTTP overhead: {figures['requests_per_path']} sequential requests per path in {args.rounds} alternating "
          f"rounds; SLM: {figures['slm']}; {figures['cpus']} CPUs, load average {load:.1f}")
    for path, label in zip(PATHS, ("in-process cascade", "cascade over gRPC", "cascade over HTTP (httpx)",
                                   "cascade over HTTP (openai SDK)")):
        print(f"  {label:31}: p50 {p50[path]:7.3f} ms   p99 {p99[path]:7.3f} ms")
    print(f"  HTTP over in-process          : p50 +{figures['http_over_in_process_p50_ms']:.3f} ms   "
          f"p99 +{figures['http_over_in_process_p99_ms']:.3f} ms; per round: "
          + ", ".join(f"{x:.3f}" for x in per_round["http_over_in_process"]))
    print(f"  HTTP over gRPC                : p50 +{figures['http_over_grpc_p50_ms']:.3f} ms   "
          f"p99 +{figures['http_over_grpc_p99_ms']:.3f} ms (goal <= 2 ms p50); per round: "
          + ", ".join(f"{x:.3f}" for x in per_round["http_over_grpc"]))
    write_figures(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
