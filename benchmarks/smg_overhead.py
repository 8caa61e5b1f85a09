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
millisecond-scale difference. `latency.InstantTokenExecutor` is a real Executor that streams a fixed
answer's tokens at once, so everything but the model runs: both clients, SMG, the worker's servicer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from latency import InstantTokenExecutor, block_parser, free_port, load_average, percentile, timed, write_figures  # noqa: E402

from corea_engine.models import resolve_model  # noqa: E402
from corea_engine.server.app import build_server  # noqa: E402
from corea_engine.server.background import ServerThread  # noqa: E402
from corea_engine.server.worker_service import WorkerService  # noqa: E402

MODEL = "smollm2-135m"
QUESTION = [{"role": "user", "content": "Tom has 3 apples and buys 5 more. How many apples does he have?"}]


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
    ap = block_parser(__doc__, warmup=30, real_help="the real SmolLM2 (--max-new-tokens, greedy) instead of the stand-in")
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer

    model_path = resolve_model(MODEL).path
    if args.real:
        from corea_engine.runtime.torch_executor import TorchExecutor

        executor = TorchExecutor(threads=1)
    else:
        executor = InstantTokenExecutor(AutoTokenizer.from_pretrained(model_path), "Tom has 8 apples.",
                                        model_name=MODEL, ends_on_eos=True)
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
    load = load_average()
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
    write_figures(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
