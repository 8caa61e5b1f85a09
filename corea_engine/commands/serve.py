"""`corea serve`: the cascade as a corea.v1.Corea gRPC server, with health, reflection, metrics;
with --http-port also as OpenAI's chat-completions API in the same process (server/http_app.py)."""

from __future__ import annotations

from .cascade_args import add_cascade_args
from .common import COUNT, PORT, SECONDS
from .security_args import add_llm_client_args, add_security_args


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve the cascade over gRPC (corea.v1.Corea)")
    p.add_argument("--host", default="[::]", help="address every listener binds, gRPC, HTTP and /metrics "
                   "(default [::]: all interfaces; 127.0.0.1: this machine only)")
    p.add_argument("--port", type=PORT, default=50051)
    p.add_argument("--http-port", type=PORT, default=None,
                   help="also serve OpenAI's HTTP API (/v1/chat/completions, /v1/models, /health, /ready) here")
    p.add_argument("--http-host", default=None, help="the HTTP front's address (default: --host)")
    p.add_argument("--metrics-port", type=PORT, default=9464,
                   help="Prometheus /metrics HTTP port, on --host (plaintext, no token: keep it off untrusted networks)")
    p.add_argument("--no-metrics", action="store_true", help="do not serve /metrics")
    p.add_argument("--max-inflight", type=COUNT, default=64, help="concurrent requests before RESOURCE_EXHAUSTED")
    p.add_argument("--grace-s", type=SECONDS, default=30.0, help="how long shutdown waits for in-flight requests")
    add_cascade_args(p)
    add_security_args(p)
    add_llm_client_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import asyncio

    from ..cli import CommandError
    from ..server.app import ServerStartError, build_server, serve
    from .cascade_args import build_cascade, load_config

    from .security_args import security_from_args, with_llm_client_args

    config = with_llm_client_args(load_config(args), args)  # refuse bad settings before loading a model
    security = security_from_args(args)
    if args.http_port and args.http_port == args.port:
        raise CommandError(f"--http-port must differ from --port, got {args.http_port} for both")
    cascade, executors = build_cascade(args, config)

    async def main():
        try:
            server = build_server(cascade, port=args.port, host=args.host, max_inflight=args.max_inflight,
                                  security=security, http_port=args.http_port, http_host=args.http_host)
        except ServerStartError as err:
            raise CommandError(str(err)) from None
        local = ", ".join(f"{e.model_name} ({e.runtime})" for e in executors if e.runtime)
        local = f"; in process: {local}" if local else ""  # what --dtype auto chose
        ready = lambda s: print(f"corea serve: {', '.join(s.services)} on port {s.port} of {args.host} ({security.describe()}{local})"  # noqa: E731
                                + ("" if s.http is None else f", OpenAI HTTP API on port {s.http_port}")
                                + ("" if args.no_metrics else f", metrics on {args.host}:{s.metrics_port}/metrics"), flush=True)
        try:
            await serve(server, metrics_port=None if args.no_metrics else args.metrics_port, grace_s=args.grace_s, ready=ready)
        except ServerStartError as err:
            raise CommandError(str(err)) from None
        await cascade.close()

    try:
        asyncio.run(main())
    finally:
        for executor in executors:
            executor.close()
    return 0
