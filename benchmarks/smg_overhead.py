"""SMG overhead: per-request latency SMG adds in front of a `corea worker` over calling it directly.

    python benchmarks/smg_overhead.py                  # instant stand-in model (isolates the layers)
    python benchmarks/smg_overhead.py --real -n 40     # the real SmolLM2, 4 new tokens

Two paths to the same worker (SglangScheduler over loopback), in one run, in alternating blocks so
drift in machine load hits both alike:
- direct: what a client of the worker does for a chat answer: apply the chat template and tokenize
  (transformers), Generate through the generated stub, decode the output ids;
- SMG: the openai SDK's chat.completions.create to `smg launch` (HTTP, SMG's own template,
  tokenizer and detokenizer in Rust, gRPC to the worker).
The difference of the p50s (and p99s) is what the gateway costs per request.

Why a stand-in by default: a model step costs ~40 ms +- several ms on a shared CPU and would drown a
millisecond-scale difference. `InstantExecutor` is a real Executor that streams a fixed answer's
tokens at once, so everything but the model runs: both clients, SMG, the worker's servicer.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
from openai import OpenAI
from smg_grpc_proto.generated import sglang_scheduler_pb2 as pb, sglang_scheduler_pb2_grpc as pb_grpc

from corea_engine.models import resolve_model
from corea_engine.runtime.executor import Executor, FinishedEvent, Request, RequestStream, Result, TokenEvent
from corea_engine.server.app import build_server
from corea_engine.server.background import ServerThread
from corea_engine.server.worker_service import WorkerService

MODEL = "smollm2-135m"
QUESTION = [{"role": "user", "content": "Tom has 3 apples and buys 5 more. How many apples does he have?"}]


class InstantExecutor(Executor):
    """Streams the tokens of a fixed answer at once, then finishes on EOS (no model)."""

    model_name = MODEL

    def __init__(self, tokenizer, answer: str = "Tom has 8 apples."):
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        self.answer_ids = tokenizer.encode(answer, add_special_tokens=False)

    def submit(self, request: Request) -> RequestStream:
        request.validate(16000)
        request.check_token_ids(self.vocab_size)
        stream = RequestStream(request.request_id)
        for token in self.answer_ids:
            stream.push(TokenEvent(request.request_id, token, ""))
        stream.push(FinishedEvent(request.request_id, Result(
            request.request_id, "", "stop", prompt_tokens=len(request.input_ids or ()),
            completion_tokens=len(self.answer_ids), token_ids=list(self.answer_ids),
            matched_stop=self.tokenizer.eos_token_id)))
        return stream

    def abort(self, request_id: str) -> bool:
        return False

    def load(self) -> tuple[int, int]:
        return 0, 0


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_smg(worker_port: int, model_path: Path, log: Path) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("smg") or str(Path(sys.executable).with_name("smg"))
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([binary, "launch", "--host", "127.0.0.1", "--port", str(port),
                                 "--worker-urls", f"grpc://127.0.0.1:{worker_port}", "--model-path", str(model_path),
                                 "--policy", "round_robin", "--log-level", "warn",
                                 "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port())],
                                stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/workers", timeout=5) as reply:
                workers = json.loads(reply.read()).get("workers")
            if workers:  # and the tokenizer registered: a one-token answer comes back
                OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0).chat.completions.create(
                    model=MODEL, messages=QUESTION, max_tokens=1)
                return proc, base
        except Exception:  # not up yet, or 503 while the tokenizer registers
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"smg did not start:\n{log.read_text()[-2000:]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=200, help="measured requests per path and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--real", action="store_true", help="the real SmolLM2 (--max-new-tokens, greedy) instead of the stand-in")
    ap.add_argument("--max-new-tokens", type=int, default=4)
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer

    model_path = resolve_model(MODEL).path
    if args.real:
        from corea_engine.runtime.torch_executor import TorchExecutor

        executor = TorchExecutor(threads=1)
    else:
        executor = InstantExecutor(AutoTokenizer.from_pretrained(model_path))
    tokenizer = AutoTokenizer.from_pretrained(model_path)  # the direct client's own copy
    server = ServerThread(lambda: build_server(worker=WorkerService(executor, model_path=model_path), host="127.0.0.1")).start()
    channel = grpc.insecure_channel(server.address)
    stub = pb_grpc.SglangSchedulerStub(channel)
    log = Path(tempfile.mkdtemp(prefix="smg-overhead-")) / "smg.log"
    smg, base = start_smg(server.port, model_path, log)
    client = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)

    def direct() -> str:
        ids = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=True, return_dict=False)
        reply = list(stub.Generate(pb.GenerateRequest(tokenized=pb.TokenizedInput(input_ids=ids), sampling_params=pb.SamplingParams(
            max_new_tokens=args.max_new_tokens if args.real else 32)), timeout=120))[-1].complete
        return tokenizer.decode(reply.output_ids, skip_special_tokens=True)

    def via_smg() -> str:
        reply = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0,
                                               max_tokens=args.max_new_tokens if args.real else 32)
        return reply.choices[0].message.content

    def timed(call, count):
        times = []
        for _ in range(count):
            t0 = time.perf_counter()
            call()
            times.append((time.perf_counter() - t0) * 1000)
        return times

    try:
        assert direct().strip() == via_smg().strip(), (direct(), via_smg())  # the same answer both ways
        timed(direct, args.warmup)
        timed(via_smg, args.warmup)
        rounds = [(timed(direct, args.n), timed(via_smg, args.n)) for _ in range(args.rounds)]
    finally:
        channel.close()
        server.close()
        smg.send_signal(signal.SIGTERM)
        try:
            smg.wait(15)
        except subprocess.TimeoutExpired:  # SMG's router may outlive a SIGTERM: stop it by pid
            smg.kill()
        executor.close()
    directs = sum((d for d, _ in rounds), [])
    smgs = sum((s for _, s in rounds), [])
    load = os.getloadavg()[0]
    figures = {
        "model": f"SmolLM2-135M, {args.max_new_tokens} new tokens" if args.real else "instant stand-in (fixed 6-token answer)",
        "requests_per_path": len(directs), "rounds": args.rounds, "cpus": os.cpu_count(), "load_average_1min": load,
        "direct_p50_ms": statistics.median(directs), "direct_p99_ms": percentile(directs, 0.99),
        "smg_p50_ms": statistics.median(smgs), "smg_p99_ms": percentile(smgs, 0.99),
        "added_p50_ms": statistics.median(smgs) - statistics.median(directs),
        "added_p99_ms": percentile(smgs, 0.99) - percentile(directs, 0.99),
        "added_p50_ms_per_round": [statistics.median(s) - statistics.median(d) for d, s in rounds],
    }
    print(f"SMG overhead: {len(directs)} sequential requests per path in {args.rounds} alternating rounds; "
          f"{figures['model']}; {figures['cpus']} CPUs, load average {load:.1f}")
    print(f"  worker direct (template + stub + decode): p50 {figures['direct_p50_ms']:.2f} ms   p99 {figures['direct_p99_ms']:.2f} ms")
    print(f"  through SMG (openai SDK)                : p50 {figures['smg_p50_ms']:.2f} ms   p99 {figures['smg_p99_ms']:.2f} ms")
    print(f"  added by SMG                            : p50 {figures['added_p50_ms']:+.2f} ms   p99 {figures['added_p99_ms']:+.2f} ms;"
          " per round p50: " + ", ".join(f"{x:+.2f}" for x in figures["added_p50_ms_per_round"]))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
