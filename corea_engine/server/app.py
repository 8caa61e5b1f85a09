"""Assemble and run the gRPC server: services, health, reflection, interceptors, metrics.

    server = build_server(cascade=..., port=50051)   # or worker=WorkerService(executor); inside the event loop
    await serve(server, metrics_port=9090)                             # until SIGTERM / SIGINT

`corea serve` has the cascade, `corea worker` the engines' protocol (sglang.grpc.scheduler.
SglangScheduler, worker_service.py); one server may carry both. With http_port the cascade is also
served as OpenAI's chat-completions API (http_app.py) in the same loop, with the same limits, tokens
and metrics. Every listener binds the configured host (gRPC, /metrics; HTTP unless http_host says).
Shutdown: health turns NOT_SERVING, new calls are refused, in-flight ones get `grace_s` to finish.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from smg_grpc_proto.generated import sglang_scheduler_pb2_grpc as pb_grpc

from ..cascade import Cascade
from ..protos import corea_pb2, corea_pb2_grpc
from .corea_service import CoreaService
from .http_app import HttpFront, bind_http
from .interceptors import ConcurrencyLimit
from .metrics import CoreaMetrics
from .security import ServerSecurity
from .worker_service import SERVICE_NAME as WORKER_SERVICE, WorkerService

log = logging.getLogger(__name__)

COREA_SERVICE = corea_pb2.DESCRIPTOR.services_by_name["Corea"].full_name


class ServerStartError(RuntimeError):
    """A port (gRPC or /metrics) could not be bound."""


@dataclass
class Server:
    grpc_server: grpc.aio.Server
    host: str  # as given to build_server ("127.0.0.1", "[::]", a name)
    port: int
    health: health_aio.HealthServicer
    services: list[str]
    limit: ConcurrencyLimit
    metrics: CoreaMetrics
    corea: CoreaService | None = None
    worker: WorkerService | None = None
    http: HttpFront | None = None  # the OpenAI-compatible front, when asked for
    _metrics_http: object = field(default=None, repr=False)

    @property
    def metrics_port(self) -> int | None:
        """The bound /metrics port (useful when started with port 0)."""
        return self._metrics_http.server_port if self._metrics_http is not None else None

    async def start(self, metrics_port: int | None = None) -> None:
        """Start serving; with metrics_port, /metrics over HTTP on the same host as gRPC."""
        await self.grpc_server.start()
        try:
            for name in ["", *self.services]:
                await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
            if self.http is not None:
                await self.http.start()
            if metrics_port is not None:
                try:
                    self._metrics_http = self.metrics.serve_http(metrics_port, self.host.strip("[]"))
                except (OSError, OverflowError) as err:  # in use, not an address here, not a port number
                    reason = getattr(err, "strerror", None) or err
                    raise ServerStartError(f"cannot serve /metrics on {self.host}:{metrics_port}: {reason}") from None
        except BaseException:
            await self.stop(0)  # nothing half-started stays listening
            raise

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http is not None else None

    async def stop(self, grace_s: float | None = 30.0) -> None:
        """Refuse new calls, let in-flight ones finish for up to grace_s, then close."""
        await self.health.enter_graceful_shutdown()
        await asyncio.gather(self.grpc_server.stop(grace_s), *([self.http.stop(grace_s)] if self.http else []))
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http = None


def build_server(
    cascade: Cascade | None = None,
    *,
    worker: WorkerService | None = None,
    port: int = 0,
    host: str = "[::]",
    max_inflight: int = 64,
    interceptors: list[grpc.aio.ServerInterceptor] | tuple = (),
    metrics: CoreaMetrics | None = None,
    options: list[tuple] | None = None,
    security: ServerSecurity | None = None,  # TLS, bearer tokens, per-request limits (server/security.py)
    http_port: int | None = None,  # also serve the cascade over OpenAI's HTTP API here (0: a free port)
    http_host: str | None = None,  # None: the gRPC host
) -> Server:
    """A grpc.aio server with the given services; port 0 picks a free one. Call inside the loop.

    ServerStartError when a port cannot be bound; ValueError for http_port without a cascade.
    """
    if http_port is not None and cascade is None:
        raise ValueError("http_port serves the cascade: it needs a cascade")
    if cascade is None and worker is None:
        raise ValueError("build_server needs a cascade, a worker, or both")
    metrics = metrics or CoreaMetrics()
    limit = ConcurrencyLimit(max_inflight, on_change=metrics.inflight.set)
    security = security or ServerSecurity()
    if security.limits is not None:
        metrics.track_cache("clients_in_flight", lambda: len(security.limits.inflight))
    for role, executor in (("slm", cascade.slm if cascade else None), ("llm", worker.executor if worker else None)):
        if hasattr(executor, "prefix_cache_entries"):
            metrics.track_cache(f"{role}_prefix_kv", lambda e=executor: e.prefix_cache_entries)
    # gRPC shares a port with another process by default (SO_REUSEPORT): a second server would
    # silently split the first one's traffic. A port in use is a start error instead.
    server = grpc.aio.server(interceptors=[*security.interceptors(), limit, *interceptors],
                             options=[("grpc.so_reuseport", 0), *security.options(), *(options or [])])
    services = []
    corea_service = None
    if cascade is not None:
        corea_service = CoreaService(cascade, metrics)
        corea_pb2_grpc.add_CoreaServicer_to_server(corea_service, server)
        services.append(COREA_SERVICE)
    if worker is not None:
        pb_grpc.add_SglangSchedulerServicer_to_server(worker, server)
        services.append(WORKER_SERVICE)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        [*services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server)
    bound = security.bind(server, f"{host}:{port}")
    if bound == 0:
        raise ServerStartError(f"cannot bind {host}:{port} (in use, or not an address of this machine)")
    http = None
    if http_port is not None:
        try:
            sock = bind_http(http_host or host, http_port)
        except OSError as err:
            raise ServerStartError(f"cannot bind HTTP {http_host or host}:{http_port} ({err.strerror or err})") from None
        http = HttpFront(cascade, sock, metrics=metrics, limit=limit, security=security)
    return Server(server, host, bound, health, services, limit, metrics, corea_service, worker, http)


async def serve(server: Server, *, metrics_port: int | None = None, grace_s: float = 30.0, ready=None) -> None:
    """Start, run until SIGTERM or SIGINT, then drain in-flight requests for up to grace_s."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread: the caller stops us
            pass
    await server.start(metrics_port)
    log.info("serving %s on port %d", ", ".join(server.services), server.port)
    if ready is not None:
        ready(server)
    await stop.wait()
    log.warning("shutting down: draining %d in-flight request(s) for up to %.0f s", server.limit.inflight, grace_s)
    await server.stop(grace_s)
