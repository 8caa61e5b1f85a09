"""Helpers for server interceptors: replace or wrap an RpcMethodHandler of any of the four kinds."""

from __future__ import annotations

import inspect
from typing import Awaitable, Callable

import grpc

_FACTORIES = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def _kind(handler) -> str:
    return next(k for k in _FACTORIES if getattr(handler, k) is not None)


def deny_handler(handler, code: grpc.StatusCode, message: str):
    """A handler of the same kind that ends every call with (code, message).

    The request bytes are never deserialized and the service is never called.
    """
    kind = _kind(handler)

    async def refuse(request_or_iterator, context):
        await context.abort(code, message)

    if kind.endswith("_stream"):
        async def refuse_stream(request_or_iterator, context):  # an async generator, as stream handlers are
            await context.abort(code, message)
            yield  # pragma: no cover - abort raises

        behaviour = refuse_stream
    else:
        behaviour = refuse
    return _FACTORIES[kind](behaviour, request_deserializer=lambda raw: None,
                            response_serializer=handler.response_serializer)


# admit(request, context) runs before the method; it aborts the call, or returns a release
# callback (or None) that runs when the call ends, however it ends.
Admit = Callable[[object, grpc.aio.ServicerContext], Awaitable[Callable[[], None] | None]]


def guarded(handler, admit: Admit, request_deserializer=None, wrap_context=None):
    """Wrap a unary-request handler so that `admit` runs first; other kinds are returned as they are.

    request_deserializer replaces the handler's own (None: keep it); wrap_context(context) is what
    admit and the method get instead of the call's context (None: the context itself).
    """
    deserializer = request_deserializer or handler.request_deserializer
    wrap = wrap_context or (lambda context: context)

    def admitted(inner):
        """A coroutine method (unary, or a stream written with context.write) behind `admit`."""

        async def call(request, context):
            context = wrap(context)
            release = await admit(request, context)
            try:
                return await inner(request, context)
            finally:
                if release is not None:
                    release()

        return call

    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            admitted(handler.unary_unary), request_deserializer=deserializer,
            response_serializer=handler.response_serializer)
    if handler.unary_stream is not None:
        inner_stream = handler.unary_stream
        if not inspect.isasyncgenfunction(inner_stream):
            # A coroutine that writes with context.write (grpc's health Watch).
            return grpc.unary_stream_rpc_method_handler(
                admitted(inner_stream), request_deserializer=deserializer,
                response_serializer=handler.response_serializer)

        async def stream(request, context):
            context = wrap(context)
            release = await admit(request, context)
            try:
                async for item in inner_stream(request, context):
                    yield item
            finally:
                if release is not None:
                    release()

        return grpc.unary_stream_rpc_method_handler(
            stream, request_deserializer=deserializer, response_serializer=handler.response_serializer)
    return handler
