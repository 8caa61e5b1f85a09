"""corea.v1.Corea over a Cascade.

Status codes: INVALID_ARGUMENT for bad input (the message names the field), UNAVAILABLE when
the SLM runtime is closed, DEADLINE_EXCEEDED when the caller's deadline passes first,
INTERNAL for anything unexpected. The caller's remaining time is handed to the cascade, which
gives the LLM call only what is left of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from ..cascade import Cascade, DeadlineExceeded, Finished, InvalidSolveRequest
from ..protos import corea_pb2, corea_pb2_grpc
from ..runtime.executor import ExecutorError, InvalidRequestError
from .convert import to_event, to_response, to_solve_request
from .metrics import CoreaMetrics

log = logging.getLogger(__name__)
MAX_BATCH = 256


class CoreaService(corea_pb2_grpc.CoreaServicer):
    def __init__(self, cascade: Cascade, metrics: CoreaMetrics | None = None):
        self.cascade = cascade
        self.metrics = metrics or CoreaMetrics()

    async def Solve(self, request, context):
        req = await self._parse(request, context, "Solve")
        result = await self._guard(context, "Solve", self.cascade.solve(req))
        return to_response(result)

    async def SolveStream(self, request, context):
        req = await self._parse(request, context, "SolveStream")
        method = "SolveStream"
        try:
            async with contextlib.aclosing(self.cascade.stream(req)) as events:
                async for event in events:
                    if isinstance(event, Finished):
                        self._observe(method, event.result)
                    yield to_event(event)
        except asyncio.CancelledError:
            self.metrics.failed(method, _why_cancelled(context))
            raise
        except Exception as err:
            await self._abort_for(context, method, err)

    async def SolveBatch(self, request, context):
        if len(request.requests) > MAX_BATCH:
            self.metrics.failed("SolveBatch", "invalid")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"a batch holds at most {MAX_BATCH} requests, got {len(request.requests)}")
        reqs = []
        for i, item in enumerate(request.requests):
            reqs.append(await self._parse(item, context, "SolveBatch", where=f"requests[{i}]: "))
        results = await self._guard(context, "SolveBatch", asyncio.gather(*(self.cascade.solve(r) for r in reqs)), observe=False)
        for r in results:
            self._observe("SolveBatch", r)
        return corea_pb2.SolveBatchResponse(responses=[to_response(r) for r in results])

    # -- shared ----------------------------------------------------------------------------
    async def _parse(self, request, context, method: str, where: str = ""):
        """The request as a validated SolveRequest, or INVALID_ARGUMENT."""
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            self.metrics.failed(method, "deadline")
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the request started")
        try:
            req = to_solve_request(request, timeout_s=remaining)
            self.cascade.plan(req)  # validates every field before any model runs
            return req
        except (InvalidSolveRequest, InvalidRequestError) as err:
            self.metrics.failed(method, "invalid")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, where + str(err))

    async def _abort_for(self, context, method: str, err: Exception):
        """End the call with the canonical status for a failure of the cascade."""
        if isinstance(err, (InvalidSolveRequest, InvalidRequestError)):
            self.metrics.failed(method, "invalid")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        if isinstance(err, DeadlineExceeded):
            self.metrics.failed(method, "deadline")
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(err))
        self.metrics.failed(method, "error")
        if isinstance(err, ExecutorError):
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(err))
        log.exception("%s failed", method)
        await context.abort(grpc.StatusCode.INTERNAL, f"{type(err).__name__}: {err}")

    async def _guard(self, context, method: str, work, observe: bool = True):
        try:
            result = await work
        except asyncio.CancelledError:
            self.metrics.failed(method, _why_cancelled(context))
            raise
        except Exception as err:
            await self._abort_for(context, method, err)
        if observe:
            self._observe(method, result)
        return result

    def _observe(self, method: str, result) -> None:
        self.metrics.observe_result(method, result, self.cascade.config)


def _why_cancelled(context) -> str:
    """grpc cancels the handler both when the caller goes away and when its deadline passes."""
    remaining = context.time_remaining()
    return "deadline" if remaining is not None and remaining <= 0 else "cancelled"
