"""`corea serve-llm`: any model on the embedded runtime as a corea.v1.LLM server.

On the embedded default (SmolLM2-135M) this is a STAND-IN for a real LLM tier.
"""

from __future__ import annotations

from .common import COUNT, PORT, SECONDS, add_model_args, bounded, default_threads, make_executor
from .security_args import add_security_args


def register(sub) -> None:
    p = sub.add_parser("serve-llm", help="serve a model as the LLM tier over gRPC (corea.v1.LLM)")
    p.add_argument("--host", default="[::]")
    p.add_argument("--port", type=PORT, default=50052)
    p.add_argument("--max-inflight", type=COUNT, default=64)
    p.add_argument("--max-batch-size", type=bounded(int, 1, 4096), default=16)
    p.add_argument("--grace-s", type=SECONDS, default=30.0)
    add_model_args(p)
    add_security_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import asyncio

    from ..cli import CommandError
    from .security_args import security_from_args

    security = security_from_args(args)  # refuse bad settings before loading a model
    from ..server.app import ServerStartError, build_server, serve

    # --backend torch (embedded) or sglang (GPU serving)
    executor = make_executor(args, threads=default_threads(), max_batch_size=args.max_batch_size)

    async def main():
        try:
            server = build_server(llm_executor=executor, port=args.port, host=args.host, max_inflight=args.max_inflight,
                                  security=security)
        except ServerStartError as err:
            raise CommandError(str(err)) from None
        stand_in = " (a stand-in LLM)" if executor.model_name == "smollm2-135m" else ""
        await serve(server, grace_s=args.grace_s,
                    ready=lambda s: print(f"corea serve-llm: {executor.model_name}{stand_in} on port {s.port} "
                                          f"({security.describe()})", flush=True))

    with executor:
        asyncio.run(main())
    return 0
