"""`corea solve "question"`: answer one question through the cascade, print the result as JSON.

With --address it asks a running `corea serve` (--tls-ca, --tls-cert/--tls-key, --token-file for
a secured one); otherwise it runs the cascade in this process,
with the LLM tier from --llm-address, --llm-openai-base-url + --llm-model, or --llm-model for an
in-process one; with none of them the SLM's own model stands in (or use --mode slm_only).
--stream prints the events as JSON lines as they happen.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

from .cascade_args import add_cascade_args
from .security_args import add_client_args, connect, uses_client_security


def register(sub) -> None:
    p = sub.add_parser("solve", help="answer one question through the cascade, print JSON")
    p.add_argument("question")
    p.add_argument("--address", default=None, help="host:port of a running `corea serve` (else: in-process)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (the gRPC deadline)")
    p.add_argument("--stream", action="store_true", help="print every event as a JSON line")
    add_cascade_args(p)
    add_client_args(p)
    p.set_defaults(func=run)


def _request(args):
    from ..cascade import SolveRequest

    return SolveRequest(question=args.question, threshold=args.threshold, confidence_source=args.confidence_source,
                        mode=args.mode, contract=args.contract, max_new_tokens=args.max_new_tokens,
                        timeout_s=args.timeout)


def run(args) -> int:
    from ..cli import CommandError

    if uses_client_security(args) and not args.address:
        raise CommandError("--tls-* and --token-file are for reaching a server: give --address too")
    result = _remote(args) if args.address else _local(args)
    if not args.stream:
        json.dump(asdict(result), sys.stdout, indent=2)
        print()
    return 0 if result.answer else 1


def _remote(args):
    import grpc
    from google.protobuf.json_format import MessageToDict

    from ..cli import CommandError
    from ..server.convert import from_response

    with connect(args, timeout_s=args.timeout) as client:
        try:
            if not args.stream:
                return client.solve(_request(args))
            for event in client.stream(_request(args)):
                print(json.dumps(MessageToDict(event)), flush=True)
                if event.WhichOneof("event") == "result":
                    return from_response(event.result)
        except grpc.RpcError as err:
            raise CommandError(f"{err.code().name}: {err.details()}") from None
    raise CommandError("the server's stream ended without a result")


def _local(args):
    import asyncio

    from ..cascade import Cascade, Finished
    from .cascade_args import build_cascade, load_config

    config = load_config(args)
    request = _request(args)
    Cascade.tiered([None] * len(config.tier_list()), config).plan(request)  # refuse bad input before loading a model
    if config.tiers is None and config.mode != "slm_only" and not (config.llm_address or config.llm_openai_base_url
                                                                   or args.llm_model):
        # Nothing configured: run the same model as a stand-in LLM tier, so that one command
        # works on a fresh machine; the result's llm_model says it is a stand-in.
        args.llm_model = stand_in = args.model or "smollm2-135m"
    else:
        stand_in = None
    cascade, executors = build_cascade(args, config)
    if stand_in:  # said once the models load: a bad --model gets its one-line error alone
        print(f"corea solve: no LLM tier configured; {stand_in} stands in for it", file=sys.stderr)

    async def main():
        try:
            async for event in cascade.stream(request):
                if args.stream:
                    print(json.dumps({type(event).__name__: asdict(event)}), flush=True)
                if isinstance(event, Finished):
                    return event.result
        finally:
            await cascade.close()

    try:
        return asyncio.run(main())
    finally:
        for executor in executors:
            executor.close()
