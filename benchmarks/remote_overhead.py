"""Remote SLM overhead: what reaching the SLM over the engines' gRPC protocol adds per request.

    python benchmarks/remote_overhead.py                 # 100 pairs, 2 new tokens, json contract
    python benchmarks/remote_overhead.py -n 300 --max-new-tokens 1 --json runs/remote.json
    python benchmarks/remote_overhead.py --instant -n 500   # no model: the protocol's own cost

One run, two paths, the same request: a `TorchExecutor` in this process, and a `RemoteExecutor`
against a `corea worker` subprocess on loopback (chat template and detokenizing here; the
contract's grammar, token_ids_logprob of the confidence scale and the generation there), each
awaited in one event loop as the cascade awaits its SLM. The two run as pairs in random order,
one request at a time, so machine load drifts over both alike. Both engines use one torch thread and the same weights; the budget
is tiny (default 2 new tokens) and the prompt has no system part (so neither side's prefix
cache applies), so model time is small and equal. Reported: p50/p99 of each path, the
difference of the medians, and p50/p99 of the paired differences (remote - in process).

On a loaded shared CPU a model step varies by tens of milliseconds, which drowns a millisecond of
transport. `--instant` swaps the model for `latency.InstantTokenExecutor`, a real Executor that
answers at once with fixed tokens (and the asked-for logprobs): the worker then runs in a thread of this process
and everything but the model is measured (chat template, proto, HTTP/2 over loopback, the
worker's handler, streaming, detokenizing, the confidence reading's logprobs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from latency import InstantTokenExecutor, free_port, load_average, percentile, write_figures  # noqa: E402

from corea_engine.runtime.executor import Request, SamplingParams  # noqa: E402
from corea_engine.runtime.remote_executor import RemoteExecutor  # noqa: E402
from corea_engine.runtime.scheduler_client import pb  # noqa: E402
from corea_engine.runtime.torch_executor import TorchExecutor  # noqa: E402
from smg_grpc_proto.generated import sglang_scheduler_pb2_grpc as pb_grpc  # noqa: E402

QUESTION = "Tom has 3 apples and buys 5 more. How many apples does he have?"


def start_worker(port: int, timeout_s: float = 300) -> subprocess.Popen:
    """`corea worker` with one torch thread; returns once it answers GetModelInfo."""
    env = {**os.environ, "COREA_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "corea_engine.cli", "worker", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.SglangSchedulerStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"corea worker exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=2)
                return proc
            except grpc.RpcError:
                time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"corea worker did not answer within {timeout_s:.0f} s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=100, help="measured pairs")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=2)
    ap.add_argument("--contract", default="json", help="the SLM's contract (grammar on both paths)")
    ap.add_argument("--instant", action="store_true", help="no model: latency.InstantTokenExecutor on both paths")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    if args.instant:
        from transformers import AutoTokenizer

        from corea_engine.models import resolve_model
        from corea_engine.server.app import build_server
        from corea_engine.server.background import ServerThread
        from corea_engine.server.worker_service import WorkerService

        path = resolve_model(None).path
        tokenizer = AutoTokenizer.from_pretrained(path)
        answer = '{"reasoning": "3 + 5 = 8", "answer": "8", "confidence": 0.8}'
        local = InstantTokenExecutor(tokenizer, answer)
        server = ServerThread(lambda: build_server(worker=WorkerService(InstantTokenExecutor(tokenizer, answer), model_path=path),
                                                   host="127.0.0.1")).start()
        stop_worker = server.close
        address = server.address
    else:
        port = free_port()
        worker = start_worker(port)

        def stop_worker():
            worker.terminate()
            worker.wait(timeout=60)

        local = TorchExecutor(threads=1)
        address = f"127.0.0.1:{port}"
    remote = RemoteExecutor(address)

    def request():
        return Request(messages=[{"role": "user", "content": QUESTION}], contract=args.contract,
                       sampling=SamplingParams(temperature=0.0, max_new_tokens=args.max_new_tokens))

    async def timed(executor):
        t0 = time.perf_counter()
        result = await executor.generate_async(request())
        elapsed = (time.perf_counter() - t0) * 1000
        if result.finish_reason not in ("length", "stop", "confidence"):
            raise SystemExit(f"{type(executor).__name__}: {result.finish_reason} {result.error}")
        return elapsed, result

    async def measure():
        # Inside one event loop, as the cascade calls its SLM (the remote call runs on this loop).
        _, a = await timed(local)
        _, b = await timed(remote)
        assert a.token_ids == b.token_ids, (a.token_ids, b.token_ids)  # the same work on both paths
        for _ in range(args.warmup):
            await timed(local)
            await timed(remote)
        rng = random.Random(0)
        in_process, over_grpc = [], []
        for _ in range(args.n):
            order = [(local, in_process), (remote, over_grpc)]
            rng.shuffle(order)
            for executor, times in order:
                times.append((await timed(executor))[0])
        await remote.client.close()
        return in_process, over_grpc

    try:
        in_process, over_grpc = asyncio.run(measure())
    finally:
        remote.close()
        local.close()
        stop_worker()

    paired = [r - i for r, i in zip(over_grpc, in_process)]
    load = load_average()
    figures = {
        "pairs": args.n, "max_new_tokens": args.max_new_tokens, "contract": args.contract,
        "cpus": os.cpu_count(), "load_average_1min": load,
        "in_process_p50_ms": statistics.median(in_process), "in_process_p99_ms": percentile(in_process, 0.99),
        "remote_p50_ms": statistics.median(over_grpc), "remote_p99_ms": percentile(over_grpc, 0.99),
        "median_difference_ms": statistics.median(over_grpc) - statistics.median(in_process),
        "paired_difference_p50_ms": statistics.median(paired),
        "paired_difference_p99_ms": percentile(paired, 0.99),
    }
    figures["model"] = "instant stand-in (no model)" if args.instant else "SmolLM2-135M fp32, one thread each"
    print(f"remote SLM overhead: {args.n} pairs, {figures['model']}, {args.max_new_tokens} new tokens, contract "
          f"{args.contract}; {figures['cpus']} CPUs, load average {load:.1f}")
    print(f"  in process                           : p50 {figures['in_process_p50_ms']:.2f} ms   "
          f"p99 {figures['in_process_p99_ms']:.2f} ms")
    print(f"  remote (RemoteExecutor -> worker)    : p50 {figures['remote_p50_ms']:.2f} ms   "
          f"p99 {figures['remote_p99_ms']:.2f} ms")
    print(f"  difference of medians                : {figures['median_difference_ms']:.2f} ms (goal <= 2 ms)")
    print(f"  paired differences                   : p50 {figures['paired_difference_p50_ms']:.2f} ms   "
          f"p99 {figures['paired_difference_p99_ms']:.2f} ms")
    write_figures(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
