"""`corea worker`: one model served as the engines' gRPC protocol (SglangScheduler).

Any tier can then be this worker, an SGLang or vLLM engine in gRPC mode, or SMG in front of several
of them. On the embedded default (SmolLM2-135M) it is a STAND-IN for a real LLM tier.
"""

from __future__ import annotations

from .common import COUNT, PORT, SECONDS, add_model_args, default_threads, make_executor
from .security_args import add_security_args


def register(sub) -> None:
    p = sub.add_parser("worker", help="serve a model as sglang.grpc.scheduler.SglangScheduler (for SMG and the cascade)")
    add_args(p)
    p.set_defaults(func=run)


def add_args(p) -> None:
    p.add_argument("--host", default="127.0.0.1", help="listen address ('[::]' for every interface)")
    p.add_argument("--port", type=PORT, default=50052)
    p.add_argument("--metrics-port", type=PORT, default=None,
                   help="serve Prometheus /metrics over HTTP on this port, on --host (default: off)")
    p.add_argument("--max-inflight", type=COUNT, default=64, help="concurrent calls before RESOURCE_EXHAUSTED")
    p.add_argument("--max-batch-size", type=COUNT, default=16, help="requests decoded together (max_running_requests)")
    p.add_argument("--grace-s", type=SECONDS, default=30.0, help="how long shutdown waits for in-flight requests")
    add_model_args(p)
    add_security_args(p)


def run(args) -> int:
    import asyncio

    from ..cli import CommandError
    from .security_args import security_from_args

    security = security_from_args(args)  # refuse bad settings before loading a model
    from ..runtime.executor import MAX_NEW_TOKENS_LIMIT
    from ..server.app import ServerStartError, build_server, serve
    from ..server.worker_service import WorkerService

    executor = make_executor(args, threads=default_threads(), max_batch_size=args.max_batch_size)

    async def main():
        worker = WorkerService(executor, model_path=getattr(executor, "model_path", None),
                               max_new_tokens=security.max_new_tokens or MAX_NEW_TOKENS_LIMIT,
                               max_running_requests=args.max_batch_size)
        try:
            server = build_server(worker=worker, port=args.port, host=args.host,
                                  max_inflight=args.max_inflight, security=security)
        except ServerStartError as err:
            raise CommandError(str(err)) from None
        stand_in = " (a stand-in LLM)" if executor.model_name == "smollm2-135m" else ""
        runtime = f"{executor.runtime}; " if executor.runtime else ""
        await serve(server, metrics_port=args.metrics_port, grace_s=args.grace_s,
                    ready=lambda s: print(f"corea worker: {executor.model_name}{stand_in} on port {s.port} of {args.host} "
                                          f"({runtime}{', '.join(s.services)}; {security.describe()})", flush=True))

    with executor:
        asyncio.run(main())
    return 0
