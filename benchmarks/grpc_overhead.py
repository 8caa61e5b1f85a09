"""gRPC overhead: p50 latency the corea.v1.Corea server adds over calling the Cascade in process.

    python benchmarks/grpc_overhead.py                 # instant stand-in SLM (isolates the transport)
    python benchmarks/grpc_overhead.py --real -n 50    # the real SmolLM2, slm_only, 4 new tokens

The same requests go through two paths in one run, in alternating blocks (so drift in machine
load hits both alike): `await cascade.solve(req)` in this process, and Solve over loopback gRPC to a
server holding an identical cascade (request -> proto -> HTTP/2 -> server handler -> cascade ->
proto -> back). The difference of the p50s is the overhead; p50 of the paired differences too.

Why a stand-in by default: a model step costs ~40 ms +- several ms on a shared CPU, so the
sub-millisecond transport cost drowns in model noise. `latency.InstantExecutor` is a real Executor
that emits a fixed well-formed answer (tokens, confidence, result) at once, so everything but
the model runs: cascade policy, event plumbing, proto conversion, the server and the client.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from latency import InstantExecutor, block_parser, load_average, percentile, timed, timed_async, write_figures  # noqa: E402

from corea_engine.cascade import Cascade, CascadeConfig, SolveRequest  # noqa: E402
from corea_engine.protos import corea_pb2, corea_pb2_grpc  # noqa: E402
from corea_engine.server.app import build_server  # noqa: E402
from corea_engine.server.background import ServerThread  # noqa: E402


class EchoCorea(corea_pb2_grpc.CoreaServicer):
    """The floor: a Corea server that returns a canned response (gRPC and nothing else)."""

    def __init__(self, response):
        self.response = response

    async def Solve(self, request, context):
        return self.response


def echo_server(response) -> ServerThread:
    from corea_engine.server.app import Server

    def factory():
        server = grpc.aio.server()
        corea_pb2_grpc.add_CoreaServicer_to_server(EchoCorea(response), server)
        port = server.add_insecure_port("127.0.0.1:0")
        return Server(server, "127.0.0.1", port, _NoHealth(), [], limit=None, metrics=None)

    return ServerThread(factory).start()


class _NoHealth:
    async def set(self, *_):
        pass

    async def enter_graceful_shutdown(self):
        pass


def main(argv=None) -> int:
    ap = block_parser(__doc__, warmup=50, real_help="the real SmolLM2 (slm_only, --max-new-tokens) instead of the stand-in")
    args = ap.parse_args(argv)

    config = CascadeConfig(mode="slm_only", contract="json", max_new_tokens=args.max_new_tokens if args.real else None)
    if args.real:
        import torch

        from corea_engine.runtime.torch_executor import TorchExecutor

        torch.set_num_threads(1)
        executor = TorchExecutor(threads=1)
        local_slm, server_slm = executor, executor  # one engine; requests are sequential anyway
    else:
        local_slm, server_slm = InstantExecutor(), InstantExecutor()
    local = Cascade(local_slm, None, config)
    server = ServerThread(lambda: build_server(Cascade(server_slm, None, config), host="127.0.0.1")).start()
    channel = grpc.insecure_channel(server.address)
    stub = corea_pb2_grpc.CoreaStub(channel)
    question = "Tom has 3 apples and buys 5 more. How many apples does he have?"
    echo = echo_server(stub.Solve(corea_pb2.SolveRequest(question=question), timeout=120))
    echo_channel = grpc.insecure_channel(echo.address)
    echo_stub = corea_pb2_grpc.CoreaStub(echo_channel)

    request = corea_pb2.SolveRequest(question=question)

    def timed_local(count):
        return asyncio.run(timed_async(lambda: local.solve(SolveRequest(question)), count))

    def run():
        # Blocks per path, alternating every round, so slow drift in machine load hits all paths.
        # (Interleaving single requests was tried: the in-process call's leftovers on this
        # thread then slowed the next gRPC call by ~2 ms, which is no part of serving.)
        assert stub.Solve(request, timeout=120).answer == asyncio.run(local.solve(SolveRequest(question))).answer
        timed(lambda: stub.Solve(request, timeout=120), args.warmup)
        timed(lambda: echo_stub.Solve(request, timeout=120), args.warmup)
        timed_local(args.warmup)
        rounds = []
        for _ in range(args.rounds):
            in_process = timed_local(args.n)
            over_grpc = timed(lambda: stub.Solve(request, timeout=120), args.n)
            floor = timed(lambda: echo_stub.Solve(request, timeout=120), args.n)
            rounds.append((in_process, over_grpc, floor))
        return rounds

    try:
        rounds = run()
    finally:
        channel.close()
        echo_channel.close()
        echo.close()
        server.close()
        if args.real:
            executor.close()
    everything = [sum((list(r[k]) for r in rounds), []) for k in range(3)]
    per_round = [statistics.median(g) - statistics.median(p) for p, g, _ in rounds]
    load = load_average()
    figures = {
        "slm": "SmolLM2-135M (slm_only, %d new tokens)" % args.max_new_tokens if args.real else "instant stand-in",
        "requests_per_path": len(everything[0]),
        "load_average_1min": load,
        "cpus": os.cpu_count(),
        "in_process_p50_ms": statistics.median(everything[0]),
        "grpc_p50_ms": statistics.median(everything[1]),
        "grpc_p90_ms": percentile(everything[1], 0.9),
        "bare_grpc_echo_p50_ms": statistics.median(everything[2]),
        "added_p50_ms": statistics.median(everything[1]) - statistics.median(everything[0]),
        "added_p50_ms_per_round": per_round,
    }
    print(f"gRPC overhead: {figures['requests_per_path']} sequential requests per path in {args.rounds} alternating rounds; "
          f"SLM: {figures['slm']}; {figures['cpus']} CPUs, load average {load:.1f}")
    print(f"  in-process cascade       : p50 {figures['in_process_p50_ms']:.3f} ms")
    print(f"  cascade over gRPC        : p50 {figures['grpc_p50_ms']:.3f} ms   p90 {figures['grpc_p90_ms']:.3f} ms")
    print(f"  bare gRPC (echo server)  : p50 {figures['bare_grpc_echo_p50_ms']:.3f} ms   (the transport's floor here)")
    print(f"  added by gRPC            : p50 {figures['added_p50_ms']:.3f} ms (goal <= 1 ms); per round: "
          + ", ".join(f"{x:.3f}" for x in per_round))
    write_figures(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
