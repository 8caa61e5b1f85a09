"""The OpenAI-compatible HTTP front of `corea serve`: Starlette on uvicorn, in the gRPC server's event loop.

    POST /v1/chat/completions   the cascade, whole or streamed (server-sent events); see openai_api.py
    GET  /v1/models             corea, corea-slm-only, corea-llm-only (and corea-t<threshold> by pattern)
    GET  /health                liveness: the process answers
    GET  /ready                 readiness: 200 while the SLM runtime is up (503 when closed or draining);
                                the LLM tier probed (reachable or not, the breaker's state) with the reason

It calls the same Cascade as corea.v1.Corea and shares its limits, tokens and metrics: one
ConcurrencyLimit counts both transports, RequestLimits' rules and the TokenTable are the ones the
gRPC interceptors apply, CoreaMetrics counts HTTP calls as methods ChatCompletions and
ChatCompletionsStream. Admission in gRPC's order: body size (413), bearer token (401), the request
(400, unknown model 404), the token cap (400), the per-client then the server-wide limit (429).
The client's identity for per-client limits is its token's name, else its host.

Streaming: a role chunk at once; the SLM's tokens are held until the decision (the SLM answers
only if its confidence clears the threshold), then a chunk whose `corea.decision` says which tier
answers and why, then that tier's tokens as `delta.reasoning_content`, the answer as
`delta.content`, a final chunk with finish_reason and the whole `corea` result, the usage chunk
when stream_options.include_usage, and `data: [DONE]`. The decision headers (x-corea-tier, ...)
come with whole responses; a stream's headers carry its request id and policy.

A client that disconnects cancels its request (a stream through Starlette's disconnect watch, a
whole response through our own): the cascade's cleanup aborts the SLM request and cancels the
LLM call, whose client aborts the generation on the LLM tier.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
import uuid

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..cascade import (
    Cascade, ConfidenceKnown, Decision, Finished, InvalidSolveRequest, LlmToken, SlmToken, SolveRequest, TierToken,
)
from ..runtime.executor import ExecutorError, InvalidRequestError
from .auth import bearer_token, identity
from .interceptors import ConcurrencyLimit
from .limits import ClientLimitExceeded
from .metrics import CoreaMetrics
from .openai_api import DONE, MODEL, MODELS, APIError, ChatCall, ChunkWriter, completion, decision_headers, parse_chat_request
from .security import ServerSecurity

log = logging.getLogger(__name__)

UNARY, STREAM = "ChatCompletions", "ChatCompletionsStream"
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024  # gRPC's default received-message limit, for the same --max-message-bytes


class _ClientGone(Exception):
    pass


def bind_http(host: str, port: int) -> socket.socket:
    """A listening socket (port 0 picks one); OSError when the address cannot be bound."""
    host = host.strip("[]")
    if ":" in host:  # IPv6; '::' takes IPv4 too where the system allows
        sock = socket.create_server((host, port), family=socket.AF_INET6,
                                    dualstack_ipv6=host == "::" and socket.has_dualstack_ipv6())
    else:
        sock = socket.create_server((host, port))
    # Accepted connections inherit it. asyncio sets it only on sockets made with proto IPPROTO_TCP;
    # without it a response's second write waits for the client's delayed ACK: +40 ms a request.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class HttpFront:
    def __init__(self, cascade: Cascade, sock: socket.socket, *, metrics: CoreaMetrics, limit: ConcurrencyLimit,
                 security: ServerSecurity):
        self.cascade, self.sock, self.metrics, self.limit, self.security = cascade, sock, metrics, limit, security
        self.max_body_bytes = security.max_message_bytes or DEFAULT_MAX_BODY_BYTES
        self.refused = 0  # calls refused for want of a valid token (tests and logs)
        self.draining = False
        self.app = Starlette(
            routes=[Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
                    Route("/v1/models", self.models, methods=["GET"]),
                    Route("/health", self.health, methods=["GET"]),
                    Route("/ready", self.ready, methods=["GET"])],
            exception_handlers={HTTPException: self._http_exception})
        self._uvicorn: _EmbeddedUvicorn | None = None
        self._task: asyncio.Task | None = None

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    # -- lifecycle (Server.start / Server.stop call these) -----------------------------------
    async def start(self) -> None:
        tls, tls_options = self.security.tls, {}
        if tls is not None:  # the gRPC service's files; mTLS when it has a client CA
            tls_options = dict(ssl_certfile=tls.cert_file, ssl_keyfile=tls.key_file, ssl_ca_certs=tls.client_ca_file,
                               ssl_cert_reqs=ssl.CERT_REQUIRED if tls.client_ca_file else ssl.CERT_NONE)
        config = uvicorn.Config(self.app, lifespan="off", log_level="warning", access_log=False, **tls_options)
        self._uvicorn = _EmbeddedUvicorn(config)
        self._task = asyncio.ensure_future(self._uvicorn.serve(sockets=[self.sock]))
        while not self._uvicorn.started:
            if self._task.done():
                self._task.result()  # startup failed: raise its error
                raise RuntimeError("the HTTP server stopped during start-up")
            await asyncio.sleep(0.005)

    async def stop(self, grace_s: float | None) -> None:
        """Stop accepting; in-flight requests get grace_s (None: as long as they take)."""
        self.draining = True
        if self._uvicorn is None:
            return
        self._uvicorn.config.timeout_graceful_shutdown = grace_s
        self._uvicorn.should_exit = True
        await self._task

    # -- routes ----------------------------------------------------------------------------
    async def chat_completions(self, request: Request) -> Response:
        method = UNARY
        try:
            body = await self._body(request)
            client = self._authenticate(request)
            call = parse_chat_request(body, uuid.uuid4().hex[:16])
            method = STREAM if call.stream else UNARY
            plan = self._validate(call.solve)
            release = self._admit(call, client)
        except APIError as err:
            if err.status in (400, 404):
                self.metrics.failed(method, "invalid")
            return _error(err)
        if call.stream:
            writer = ChunkWriter(call)
            headers = {"x-corea-request-id": call.solve.request_id, "x-corea-threshold": f"{plan.thresholds[0]:g}",
                       "x-corea-mode": plan.mode, "x-corea-confidence-source": plan.source}
            return _EventStream(self._events(call, writer), release, headers)
        created = int(time.time())
        try:
            result, decision_ms = await self._unless_gone(request, self._solve(call.solve))
        except _ClientGone:
            self.metrics.failed(method, "cancelled")
            return Response(status_code=499)  # nobody reads it; for the access log
        except Exception as err:
            return _error(self._failure(method, err))
        finally:
            release()
        self.metrics.observe_result(method, result, self.cascade.config)
        return JSONResponse(completion(call, result, created, decision_ms), headers=decision_headers(result))

    async def models(self, request: Request) -> Response:
        try:
            self._authenticate(request)
        except APIError as err:
            return _error(err)
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": MODEL} for name in MODELS]})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        """200 while the SLM serves. The LLM tier's state (every tier's under "tiers") is reported, not
        required: without it the cascade answers degraded with the reason, and failing readiness on
        an LLM outage would take every replica out of rotation at once."""
        slm, llm_client = self.cascade.slm, self.cascade.llm
        slm_up = not getattr(slm, "closed", False) and not self.draining
        llm_ok, why = self.cascade.llm_available()
        unreachable = await llm_client.probe() if llm_client is not None else None
        llm = {"model": getattr(llm_client, "model_name", ""), "available": llm_ok and unreachable is None,
               "reachable": llm_client is not None and unreachable is None,
               "reason": why or unreachable or "", "breaker": self.cascade.breaker.state}
        body = {"status": "ready" if slm_up else "not ready",
                "slm": {"model": getattr(slm, "model_name", ""), "loaded": slm_up,
                        # what the embedded runtime computes in ("" for a remote one: its engine says)
                        "dtype": getattr(slm, "dtype", ""), "quantization": getattr(slm, "quantization", ""),
                        "reason": "" if slm_up else "draining" if self.draining else "the SLM runtime is closed"},
                "llm": llm,
                "tiers": [{"name": t.name, "model": t.model_name, "available": ok, "reason": why}
                          for t in self.cascade.tiers for ok, why in [t.available()]]}
        return JSONResponse(body, status_code=200 if slm_up else 503)

    # -- admission -------------------------------------------------------------------------
    async def _body(self, request: Request) -> bytes:
        limit = self.max_body_bytes
        declared = request.headers.get("content-length", "")
        too_big = APIError(413, f"the request body is over this server's limit of {limit} bytes", code="request_too_large")
        if declared.isdigit() and int(declared) > limit:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    def _authenticate(self, request: Request) -> str:
        """The client's identity; APIError 401 when tokens are on and none valid was sent."""
        tokens, name = self.security.tokens, None
        if tokens is not None:
            token = bearer_token([("authorization", request.headers.get("authorization", ""))])
            name = tokens.identify(token)
            if name is None:
                self.refused += 1
                why = ("no bearer token (send 'Authorization: Bearer <token>')" if token is None
                       else "the bearer token is not valid")
                raise APIError(401, why, code="invalid_api_key")
        return identity(name, None, request.client.host if request.client else "unknown")

    def _validate(self, req: SolveRequest):
        try:
            return self.cascade.plan(req)  # every field, before any model runs
        except (InvalidSolveRequest, InvalidRequestError) as err:
            raise APIError(400, str(err), code="invalid_value") from None

    def _admit(self, call: ChatCall, client: str):
        """Take the per-client and the server-wide slot; the callback gives both back."""
        limits, release_client = self.security.limits, None
        if limits is not None:
            why = limits.token_cap_error(call.solve.max_new_tokens or 0, "max_completion_tokens")
            if why is not None:
                raise APIError(400, why, code="invalid_value", param="max_completion_tokens")
            try:
                release_client = limits.acquire(client)
            except ClientLimitExceeded as err:
                raise APIError(429, str(err), code="rate_limit_exceeded") from None
        if not self.limit.enter():
            if release_client is not None:
                release_client()
            raise APIError(429, self.limit.refusal(), code="rate_limit_exceeded")

        def release():
            self.limit.leave()
            if release_client is not None:
                release_client()

        return release

    # -- running the cascade -----------------------------------------------------------------
    async def _solve(self, req: SolveRequest):
        """(SolveResult, ms from the start to the decision) from the cascade's event stream."""
        started, decision_ms = time.perf_counter(), None
        async with contextlib.aclosing(self.cascade.stream(req)) as events:
            async for event in events:
                if isinstance(event, Decision):
                    decision_ms = (time.perf_counter() - started) * 1000
                elif isinstance(event, Finished):
                    return event.result, decision_ms
        raise RuntimeError("the cascade stream ended without a result")  # pragma: no cover

    async def _unless_gone(self, request: Request, work):
        """Await `work`, cancelled if the client disconnects first (uvicorn does not cancel handlers)."""
        task = asyncio.ensure_future(work)
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                gone.cancel()
                raise _ClientGone()
            gone.cancel()
        return task.result()

    async def _events(self, call: ChatCall, writer: ChunkWriter):
        started, decision, reading, held, decision_ms, ended = time.perf_counter(), None, None, [], None, False
        try:
            yield writer.chunk({"role": "assistant", "content": ""})
            async with contextlib.aclosing(self.cascade.stream(call.solve)) as events:
                async for event in events:
                    if isinstance(event, SlmToken):
                        if decision is None:
                            held.append(event.text)
                        elif decision.tier == "slm":
                            yield writer.chunk({"reasoning_content": event.text})
                    elif isinstance(event, ConfidenceKnown):
                        reading = event
                    elif isinstance(event, Decision):
                        decision, decision_ms = event, (time.perf_counter() - started) * 1000
                        yield writer.decision(event, reading and reading.sampled, reading and reading.expected)
                        if event.tier_index == event.decided_by and held:  # the tier that spoke answers
                            yield writer.chunk({"reasoning_content": "".join(held)})
                        held = []
                    elif isinstance(event, TierToken):  # a middle tier (N > 2): streamed once it answers
                        if decision is not None and decision.decided_by == decision.tier_index == event.tier_index:
                            yield writer.chunk({"reasoning_content": event.text})
                        elif decision is None or decision.tier_index == event.tier_index:
                            held.append(event.text)
                    elif isinstance(event, LlmToken):
                        yield writer.chunk({"reasoning_content": event.text})
                    elif isinstance(event, Finished):
                        ended = True
                        self.metrics.observe_result(STREAM, event.result, self.cascade.config)
                        for data in writer.finish(event.result, decision_ms):
                            yield data
        except Exception as err:  # headers are gone: the error travels as an event, then [DONE]
            ended = True
            yield writer.event(self._failure(STREAM, err).body())
            yield DONE
        finally:
            if not ended:  # cancelled, or closed by the response after a disconnect
                self.metrics.failed(STREAM, "cancelled")

    def _failure(self, method: str, err: Exception) -> APIError:
        """The API error for a failure of the cascade (and its metrics count)."""
        if isinstance(err, (InvalidSolveRequest, InvalidRequestError)):
            self.metrics.failed(method, "invalid")
            return APIError(400, str(err), code="invalid_value")
        self.metrics.failed(method, "error")
        if isinstance(err, ExecutorError):
            return APIError(503, str(err), code="runtime_unavailable")
        log.exception("%s failed", method)
        return APIError(500, f"{type(err).__name__}: {err}", code="internal_error")

    async def _http_exception(self, request: Request, exc: HTTPException) -> Response:
        """Unknown routes and methods answer with OpenAI's error object too."""
        what = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return _error(APIError(exc.status_code, what.get(exc.status_code, str(exc.detail)), code=str(exc.status_code)))


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body is read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _error(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


class _EventStream(StreamingResponse):
    """Server-sent events that always end well: the events are closed (the cascade cleans up) and the slot freed."""

    def __init__(self, events, release, headers: dict[str, str]):
        super().__init__(events, media_type="text/event-stream", headers={"cache-control": "no-cache", **headers})
        self._release = release

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
            self._release()


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn inside our loop: the process's signals belong to app.serve, which stops both transports."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield
