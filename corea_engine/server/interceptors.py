"""Server interceptors. The chain is a list passed to build_server: add auth, tracing, ...

ConcurrencyLimit refuses calls beyond max_inflight with RESOURCE_EXHAUSTED at once (rather than
queueing them behind a model that is already full); it applies to the methods under `prefix`
only, so health checks and reflection always answer. The HTTP front takes its slots from the same
counter (enter/leave), so the limit holds for both transports together.
"""

from __future__ import annotations

import grpc


class ConcurrencyLimit(grpc.aio.ServerInterceptor):
    def __init__(self, max_inflight: int, prefix: str = "/corea.v1.", on_change=None):
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        self.max_inflight = max_inflight
        self.prefix = prefix
        self.inflight = 0
        self._on_change = on_change  # e.g. a gauge's set

    def enter(self) -> bool:
        """Take a slot; False when all max_inflight are taken."""
        if self.inflight >= self.max_inflight:
            return False
        self.inflight += 1
        self._changed()
        return True

    def leave(self) -> None:
        self.inflight -= 1
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.inflight)

    def refusal(self) -> str:
        return f"server is at its limit of {self.max_inflight} requests in flight; retry later"

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self.prefix):
            return handler
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request, context):
                if not self.enter():
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self.refusal())
                try:
                    return await inner(request, context)
                finally:
                    self.leave()

            return grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def stream(request, context):
                if not self.enter():
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self.refusal())
                try:
                    async for item in inner_stream(request, context):
                        yield item
                finally:
                    self.leave()

            return grpc.unary_stream_rpc_method_handler(
                stream, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
        return handler
