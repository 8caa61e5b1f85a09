"""`corea serve-llm`: the former name of `corea worker` (same flags, same server)."""

from __future__ import annotations

from . import worker


def register(sub) -> None:
    p = sub.add_parser("serve-llm", help="alias of `corea worker`: serve a model as the LLM tier")
    worker.add_args(p)
    p.set_defaults(func=worker.run)
