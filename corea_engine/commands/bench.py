"""`corea bench`: throughput and latency against concurrency, for each layer of the stack.

    corea bench --target grpc --address 127.0.0.1:50051            # a running `corea serve`
    corea bench --target grpc --spawn --cpp                        # start servers, add the C++ client
    corea bench --target executor,cascade,grpc --spawn             # every layer, one report
    corea bench --target grpc --address corea:50051 --tls-ca ca.pem --token-file t   # a secured server

Writes <out>/<stem>.json (every figure), .md (tables) and .png (throughput and p99 against
concurrency), and prints the tables.
"""

from __future__ import annotations

import sys

from .common import add_model_args, default_threads
from .security_args import add_client_args, client_security, uses_client_security

TARGETS = ("executor", "cascade", "grpc")


def register(sub) -> None:
    p = sub.add_parser("bench", help="throughput/latency sweep over concurrency (executor, cascade, gRPC)")
    p.add_argument("--target", default="grpc", help=f"comma-separated layers to drive: {', '.join(TARGETS)}")
    p.add_argument("--address", default="127.0.0.1:50051", help="a running `corea serve` (grpc target)")
    p.add_argument("--spawn", action="store_true", help="start `corea serve` on loopback for the grpc target (and stop it afterwards)")
    p.add_argument("--spawn-llm-server", action="store_true",
                   help="with --spawn: the LLM tier is a separate `corea worker` process (default: in the serve process)")
    p.add_argument("--concurrency", default="1,2,4,8,16,32,64", help="comma-separated levels")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--requests", type=int, default=None, help="requests per level, at least one per worker (default 32)")
    budget.add_argument("--seconds", type=float, default=None, help="seconds per level instead of a request count")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured requests before the first level")
    p.add_argument("--questions", default="gsm8k", help="'gsm8k' (shared data, test split) or a file, one question a line")
    p.add_argument("--question-limit", type=int, default=64, help="how many questions to cycle through")
    p.add_argument("--contract", default="json")
    p.add_argument("--max-new-tokens", type=int, default=None, help="cap per tier (default: the contract's bound)")
    p.add_argument("--max-reasoning-chars", type=int, default=None,
                   help="bound the contract's reasoning field (in-process and spawned servers; a running server uses its own config)")
    p.add_argument("--max-answer-chars", type=int, default=None, help="bound the contract's answer field (as above)")
    p.add_argument("--threshold", type=float, default=None, help="deferral threshold (default: the layer's)")
    p.add_argument("--mode", choices=["cascade", "slm_only", "llm_only"], default=None)
    p.add_argument("--timeout", type=float, default=600.0, help="per-request deadline, seconds")
    p.add_argument("--cpp", action="store_true", help="also run the C++ client (cmake build) against the grpc target")
    p.add_argument("--cpp-build-dir", default=None, help="CMake build folder for the C++ client (default build/cpp)")
    p.add_argument("--max-batch-size", type=int, default=16, help="batch size of the in-process executors and a spawned worker (corea serve uses its own default)")
    p.add_argument("--out", default="runs/bench", help="folder for the JSON, markdown and plot")
    p.add_argument("--stem", default="bench", help="file name stem of the outputs")
    add_model_args(p)
    add_model_args(p, prefix="llm-")
    add_client_args(p)
    p.set_defaults(func=run)


def parse_levels(text: str) -> list[int]:
    from ..cli import CommandError

    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CommandError(f"--concurrency wants integers separated by commas, got {text!r}") from None
    if not levels or any(level < 1 for level in levels):
        raise CommandError(f"--concurrency levels must be positive, got {text!r}")
    return levels


def check_llm_weights(args, targets: list[str]) -> None:
    """--llm-dtype/--llm-quantization set an LLM that loads its own weights: the cascade target's
    --llm-model (other than --model) or the --spawn-llm-server worker. An LLM in the SLM's process
    otherwise runs in --dtype/--quantization (the stand-in shares the SLM's weights; a spawned
    `corea serve` has one set of flags), so there they are refused (CommandError), not ignored."""
    from ..cli import CommandError

    given = [f"--llm-{name}" for name, default in (("dtype", "float32"), ("quantization", "none"))
             if getattr(args, f"llm_{name}") != default]
    if not given:
        return
    if "cascade" in targets and args.llm_model in (None, args.model):
        raise CommandError(f"{given[0]} sets an LLM's own weights: give --llm-model (the stand-in LLM shares "
                           "the SLM's weights, in --dtype/--quantization)")
    if "grpc" in targets and args.spawn and not args.spawn_llm_server:
        raise CommandError(f"{given[0]}: the spawned corea serve runs its in-process LLM in --dtype/--quantization; "
                           "add --spawn-llm-server for a worker of its own")


def run(args) -> int:
    from ..bench import report
    from ..bench.questions import QuestionSetError, load_questions
    from ..bench.runner import BenchSetup, run_targets
    from ..cli import CommandError

    targets = [t.strip() for t in args.target.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise CommandError(f"unknown --target {','.join(unknown) or args.target!r}; choose from {', '.join(TARGETS)}")
    if args.cpp and "grpc" not in targets:
        raise CommandError("--cpp drives a gRPC server: add grpc to --target")
    if uses_client_security(args) and (args.spawn or args.cpp or "grpc" not in targets):
        raise CommandError("--tls-* and --token-file reach a secured --address with the Python client: "
                           "not with --spawn (loopback, plaintext), --cpp (plaintext, no token) or without grpc in --target")
    if args.requests is not None and args.requests < 1:
        raise CommandError(f"--requests must be at least 1, got {args.requests}")
    if args.seconds is not None and args.seconds <= 0:
        raise CommandError(f"--seconds must be positive, got {args.seconds}")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise CommandError(f"--threshold must be in [0, 1], got {args.threshold}")
    for name in ("max_reasoning_chars", "max_answer_chars", "max_new_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CommandError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    check_llm_weights(args, targets)
    levels = parse_levels(args.concurrency)
    try:
        questions = load_questions(args.questions, args.question_limit)
    except QuestionSetError as err:
        raise CommandError(str(err)) from None

    setup = BenchSetup.from_args(args, levels=levels, questions=questions, threads=default_threads(),
                                 client_security=client_security(args))
    # Written after each target too, so a long run that fails late keeps what it measured.
    reports = run_targets(targets, setup, progress=lambda line: print(line, file=sys.stderr, flush=True),
                          on_report=lambda so_far: report.write(so_far, args.out, args.stem))
    paths = report.write(reports, args.out, args.stem)
    for r in reports:
        print(report.markdown(r))
    print(f"wrote {paths['json']}, {paths['md']}, {paths['png']}", file=sys.stderr)
    return 1 if any(level["errors"] for r in reports for level in r["levels"]) else 0
