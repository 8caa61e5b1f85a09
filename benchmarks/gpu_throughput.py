"""GPU mode of the benchmark: the torch executor on CUDA with a larger model of a real shape.

The model is Qwen2.5-1.5B's architecture (its config written out below) with random weights,
built with AutoModelForCausalLM.from_config: nothing is downloaded, and throughput does not
depend on weight values. The tokenizer is the embedded SmolLM2's (49,152 tokens; the model's
151,936-row head is kept at its real size and the grammar masks the rows no token maps to).

    python benchmarks/gpu_throughput.py                          # CUDA, executor + cascade sweep
    python benchmarks/gpu_throughput.py --device cpu --layers 2 --concurrency 1,2 --requests 2   # dry run

Without CUDA (and no explicit --device cpu) it says so and exits 0. Results: <out>/gpu.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import asdict
from pathlib import Path

# Qwen/Qwen2.5-1.5B-Instruct config.json, as published (architecture fields only).
QWEN25_1_5B = {
    "model_type": "qwen2",
    "architectures": ["Qwen2ForCausalLM"],
    "vocab_size": 151936,
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--targets", default="executor,cascade", help="executor and/or cascade (in-process)")
    p.add_argument("--concurrency", default="1,2,4,8,16,32,64")
    p.add_argument("--requests", type=int, default=64, help="requests per level (at least one per worker)")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-reasoning-chars", type=int, default=300)
    p.add_argument("--max-answer-chars", type=int, default=40)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--layers", type=int, default=None, help="override num_hidden_layers (a quick dry run)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the embedded SmolLM2's)")
    p.add_argument("--question-limit", type=int, default=64)
    p.add_argument("--out", default="runs/bench-gpu")
    return p.parse_args(argv)


def build_model(args):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from corea_engine.models import resolve_model

    fields = dict(QWEN25_1_5B)
    if args.layers:
        fields["num_hidden_layers"] = args.layers
    config = AutoConfig.for_model(**fields)
    torch.manual_seed(0)
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, args.dtype))
    model.to(args.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or resolve_model().path)
    params = sum(p.numel() for p in model.parameters())
    print(f"built Qwen2.5-1.5B-shaped model ({config.num_hidden_layers} layers, {params / 1e9:.2f} B parameters, "
          f"random weights) on {args.device} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return model, tokenizer, params


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_throughput: no CUDA device here; nothing to measure (use --device cpu for a dry run)")
        return 0

    from corea_engine.bench import report
    from corea_engine.bench.loadgen import sweep
    from corea_engine.bench.questions import load_questions
    from corea_engine.bench.targets import CascadeTarget, ExecutorTarget, RequestOptions
    from corea_engine.cascade import Cascade, CascadeConfig
    from corea_engine.escalation.local_llm import ExecutorLLM
    from corea_engine.runtime.torch_executor import TorchExecutor

    levels = [int(x) for x in args.concurrency.split(",")]
    targets = [t for t in args.targets.split(",") if t]
    questions = load_questions("gsm8k", args.question_limit)
    model, tokenizer, params = build_model(args)
    options = RequestOptions(contract="json", threshold=args.threshold, max_reasoning_chars=args.max_reasoning_chars,
                             max_answer_chars=args.max_answer_chars)
    slm = TorchExecutor(model_and_tokenizer=(model, tokenizer), max_batch_size=args.max_batch_size)
    llm = TorchExecutor(model_and_tokenizer=(model, tokenizer), max_batch_size=args.max_batch_size)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    config = {"model": "Qwen2.5-1.5B config, random weights", "parameters": params, "layers": model.config.num_hidden_layers,
              "dtype": args.dtype, "device": device_name, "max_batch_size": args.max_batch_size,
              "requests_per_level": args.requests, "max_reasoning_chars": args.max_reasoning_chars,
              "max_answer_chars": args.max_answer_chars, "threshold": args.threshold}
    reports = []
    try:
        for name in targets:
            if name == "executor":
                make = lambda: ExecutorTarget(slm, options)  # noqa: E731
            elif name == "cascade":
                cascade_config = CascadeConfig(max_reasoning_chars=args.max_reasoning_chars,
                                               max_answer_chars=args.max_answer_chars)
                make = lambda: CascadeTarget(Cascade(slm, ExecutorLLM(llm), cascade_config), options)  # noqa: E731
            else:
                print(f"gpu_throughput: error: unknown target {name!r} (executor, cascade)", file=sys.stderr)
                return 2
            slm.stats.reset()
            level_rows = asyncio.run(sweep(make(), questions, levels, requests=args.requests, warmup=2,
                                           on_level=lambda lv: print(_line(name, lv), file=sys.stderr, flush=True)))
            reports.append({"target": f"{name} (GPU)", "client": "python", "config": config,
                            "machine": report.machine(), "engine_stats": asdict(slm.stats), "levels": level_rows})
    finally:
        slm.close()
        llm.close()
    paths = report.write(reports, Path(args.out), "gpu")
    for r in reports:
        print(report.markdown(r))
    print(f"wrote {paths['json']}, {paths['md']}, {paths['png']}", file=sys.stderr)
    return 0


def _line(name: str, level: dict) -> str:
    return (f"{name} c={level['concurrency']} ok={level['ok']} err={level['errors']} "
            f"req/s={level['requests_per_s']:.2f} tok/s={level['slm_tokens_per_s']:.0f} "
            f"p99={level['latency_p99_ms'] or float('nan'):.0f}ms")


if __name__ == "__main__":
    sys.exit(main())
