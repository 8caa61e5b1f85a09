"""Helpers for the security, limits, fuzz and scale-out tests: hardened servers on loopback."""

from __future__ import annotations

import grpc

from cascade_servers import SMALL
from corea_engine.cascade import Cascade, CascadeConfig
from corea_engine.escalation.factory import make_client
from corea_engine.models import resolve_model
from corea_engine.runtime.executor import MAX_NEW_TOKENS_LIMIT
from corea_engine.server.app import build_server
from corea_engine.server.background import ServerThread
from corea_engine.server.security import ServerSecurity
from corea_engine.server.worker_service import WorkerService

# slm_only with small bounds: each answer is a few dozen tokens, and no LLM is needed.
SLM_ONLY = dict(SMALL, mode="slm_only")


def secured_corea(slm, security: ServerSecurity | None = None, *, max_inflight: int = 64, port: int = 0,
                  **config) -> ServerThread:
    """`corea serve` in a thread; the LLM tier (if any) from config as make_client builds it."""
    cfg = CascadeConfig(**{**SLM_ONLY, **config})
    cascade = Cascade(slm, make_client(cfg), cfg)
    return ServerThread(lambda: build_server(cascade, port=port, host="127.0.0.1", max_inflight=max_inflight,
                                             security=security)).start()


def secured_llm(executor, security: ServerSecurity | None = None, port: int = 0) -> ServerThread:
    """`corea worker` in a thread (the LLM tier)."""
    cap = security.max_new_tokens if security is not None and security.max_new_tokens else MAX_NEW_TOKENS_LIMIT
    worker = WorkerService(executor, model_path=resolve_model(None).path, max_new_tokens=cap)
    return ServerThread(lambda: build_server(worker=worker, port=port, host="127.0.0.1",
                                             security=security)).start()


def bearer(token: str) -> tuple:
    return (("authorization", f"Bearer {token}"),)


def status_of(call) -> grpc.StatusCode:
    """The status code of a blocking call (a thunk), OK when it returns."""
    try:
        result = call()
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            list(result)
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        return err.code()
