"""Remote SLM overhead: what reaching the SLM over the engines' gRPC protocol adds per request.

    python benchmarks/remote_overhead.py                 # 100 pairs, 2 new tokens, json contract
    python benchmarks/remote_overhead.py -n 300 --max-new-tokens 1 --json runs/remote.json

One run, two paths, the same request: `TorchExecutor.generate` in this process, and
`RemoteExecutor.generate` against a `corea worker` subprocess on loopback (chat template and
detokenizing here; the contract's grammar, token_ids_logprob of the confidence scale and the
generation there). The two run as pairs in random order, one request at a time, so machine
load drifts over both alike. Both engines use one torch thread and the same weights; the budget
is tiny (default 2 new tokens) and the prompt has no system part (so neither side's prefix
cache applies), so model time is small and equal. Reported: p50/p99 of each path, the
difference of the medians, and p50/p99 of the paired differences (remote - in process).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time

import grpc

from corea_engine.runtime.executor import Request, SamplingParams
from corea_engine.runtime.remote_executor import RemoteExecutor
from corea_engine.runtime.scheduler_client import pb
from corea_engine.runtime.torch_executor import TorchExecutor
from smg_grpc_proto.generated import sglang_scheduler_pb2_grpc as pb_grpc

QUESTION = "Tom has 3 apples and buys 5 more. How many apples does he have?"


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    port = free_port()
    worker = start_worker(port)
    local = TorchExecutor(threads=1)
    remote = RemoteExecutor(f"127.0.0.1:{port}")

    def request():
        return Request(messages=[{"role": "user", "content": QUESTION}], contract=args.contract,
                       sampling=SamplingParams(temperature=0.0, max_new_tokens=args.max_new_tokens))

    def timed(executor):
        t0 = time.perf_counter()
        result = executor.generate(request())
        elapsed = (time.perf_counter() - t0) * 1000
        if result.finish_reason not in ("length", "stop", "confidence"):
            raise SystemExit(f"{type(executor).__name__}: {result.finish_reason} {result.error}")
        return elapsed, result

    try:
        _, a = timed(local)
        _, b = timed(remote)
        assert a.token_ids == b.token_ids, (a.token_ids, b.token_ids)  # the same work on both paths
        for _ in range(args.warmup):
            timed(local)
            timed(remote)
        rng = random.Random(0)
        in_process, over_grpc = [], []
        for _ in range(args.n):
            order = [(local, in_process), (remote, over_grpc)]
            rng.shuffle(order)
            for executor, times in order:
                times.append(timed(executor)[0])
    finally:
        remote.close()
        local.close()
        worker.terminate()
        worker.wait(timeout=60)

    paired = [r - i for r, i in zip(over_grpc, in_process)]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    figures = {
        "pairs": args.n, "max_new_tokens": args.max_new_tokens, "contract": args.contract,
        "cpus": os.cpu_count(), "load_average_1min": load,
        "in_process_p50_ms": statistics.median(in_process), "in_process_p99_ms": percentile(in_process, 0.99),
        "remote_p50_ms": statistics.median(over_grpc), "remote_p99_ms": percentile(over_grpc, 0.99),
        "median_difference_ms": statistics.median(over_grpc) - statistics.median(in_process),
        "paired_difference_p50_ms": statistics.median(paired),
        "paired_difference_p99_ms": percentile(paired, 0.99),
    }
    print(f"remote SLM overhead: {args.n} pairs, SmolLM2-135M fp32, {args.max_new_tokens} new tokens, contract "
          f"{args.contract}; {figures['cpus']} CPUs, load average {load:.1f}")
    print(f"  in process (TorchExecutor)           : p50 {figures['in_process_p50_ms']:.2f} ms   "
          f"p99 {figures['in_process_p99_ms']:.2f} ms")
    print(f"  remote (RemoteExecutor, corea worker): p50 {figures['remote_p50_ms']:.2f} ms   "
          f"p99 {figures['remote_p99_ms']:.2f} ms")
    print(f"  difference of medians                : {figures['median_difference_ms']:.2f} ms (goal <= 2 ms)")
    print(f"  paired differences                   : p50 {figures['paired_difference_p50_ms']:.2f} ms   "
          f"p99 {figures['paired_difference_p99_ms']:.2f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
