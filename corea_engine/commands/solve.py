"""`corea solve "question"`: answer one question and print the result as JSON."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

from .common import add_model_args, default_threads


def register(sub) -> None:
    p = sub.add_parser("solve", help="answer one question, print JSON")
    p.add_argument("question")
    p.add_argument("--contract", default="json", help="output format (json, tags, json_confidence_first, tags_confidence_first)")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    add_model_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..contract import build_messages, get_format
    from ..runtime.executor import Request, SamplingParams
    from ..runtime.torch_executor import TorchExecutor

    fmt = get_format(args.contract)
    sampling = SamplingParams(args.temperature, args.top_p, args.seed, args.max_new_tokens)
    request = Request(messages=build_messages(args.question, fmt), contract=fmt, sampling=sampling)
    request.validate(max_prompt_chars=16000)  # refuse bad input before loading a model
    with TorchExecutor(args.model, device=args.device, dtype=args.dtype, threads=default_threads()) as executor:
        result = executor.generate(request)
    out = asdict(result)
    out.pop("token_ids")
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0 if result.finish_reason in ("stop", "confidence") else 1
