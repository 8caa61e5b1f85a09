"""Server interceptors. The chain is a list passed to build_server: add auth, tracing, ...

ConcurrencyLimit refuses work beyond max_inflight with RESOURCE_EXHAUSTED at once (rather than
queueing it behind a model that is already full). It counts work, not calls: a SolveBatch holds
one slot per item (`work_items`), as the per-client limit does. It applies to the methods that do
work (`LIMITED`: the cascade's API and a worker's Generate) only, so health checks, loads and
reflection always answer. The HTTP front takes its slots from
the same counter (enter/leave), so the limit holds for both transports together.
"""

from __future__ import annotations

import grpc

from ._handlers import guarded


# Method-name prefixes of the calls that run a model: every corea.v1 method, a worker's Generate.
LIMITED = ("/corea.v1.", "/sglang.grpc.scheduler.SglangScheduler/Generate")


def work_items(request) -> int:
    """How many solves or generations a request asks for: a batch's items, else 1."""
    return len(getattr(request, "requests", None) or [request])


class ConcurrencyLimit(grpc.aio.ServerInterceptor):
    def __init__(self, max_inflight: int, prefix: tuple[str, ...] = LIMITED, on_change=None):
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        self.max_inflight = max_inflight
        self.prefix = prefix
        self.inflight = 0  # work items in flight (all on the server's one event loop)
        self._on_change = on_change  # e.g. a gauge's set

    def enter(self, weight: int = 1) -> bool:
        """Take `weight` slots; False when they would pass max_inflight."""
        if self.inflight + weight > self.max_inflight:
            return False
        self._add(weight)
        return True

    def leave(self, weight: int = 1) -> None:
        self._add(-weight)

    def refusal(self, weight: int = 1) -> str:
        if weight > self.max_inflight:
            return f"a batch of {weight} is more than this server's limit of {self.max_inflight} in flight; split it"
        return (f"server is at its limit of {self.max_inflight} requests in flight ({self.inflight} now, "
                f"this call asks for {weight}); retry later")

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self.prefix):
            return handler
        return guarded(handler, self._admit)

    async def _admit(self, request, context):
        weight = work_items(request)
        if not self.enter(weight):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self.refusal(weight))
        return lambda: self.leave(weight)

    def _add(self, weight: int) -> None:
        self.inflight += weight
        if self._on_change is not None:
            self._on_change(self.inflight)
