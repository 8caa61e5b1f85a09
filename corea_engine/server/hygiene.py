"""Request hygiene, applied to every call: undecodable bytes and oversized error messages.

* A request whose bytes are not a valid message (bad UTF-8 in a string field, a truncated field,
  garbage) ends INVALID_ARGUMENT naming the method and the parser's complaint. Left alone,
  grpc.aio answers UNKNOWN and logs a traceback. The service never sees such a request.
* Status details are cut to MAX_DETAILS characters. Services echo bad input in their messages
  ("unknown contract '...'"); a 9,000-character field echoed back overflows the client's
  metadata limit and the client sees RESOURCE_EXHAUSTED instead of the real status.

It must be the first interceptor: its deserializer is the one that runs.
"""

from __future__ import annotations

import grpc

from ._handlers import guarded

MAX_DETAILS = 400  # characters; non-ASCII ones are percent-encoded (up to 12 bytes) on the wire


def bounded(details: str | None) -> str | None:
    if details is None or len(details) <= MAX_DETAILS:
        return details
    return f"{details[:MAX_DETAILS]}... ({len(details)} characters, cut)"


class _Malformed:
    def __init__(self, why: str):
        self.why = why


class _BoundedContext:
    """The call's context with abort()/set_details() that cut long details; all else delegated."""

    def __init__(self, context):
        self._context = context

    def __getattr__(self, name):
        return getattr(self._context, name)

    async def abort(self, code, details="", trailing_metadata=()):
        return await self._context.abort(code, bounded(details), trailing_metadata)

    def set_details(self, details):
        return self._context.set_details(bounded(details))


class RequestHygiene(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        decode = handler.request_deserializer

        def tolerant(raw: bytes):
            try:
                return decode(raw)
            except Exception as err:  # DecodeError, and whatever a custom deserializer raises
                return _Malformed(f"{type(err).__name__}: {err}")

        async def admit(request, context):
            if isinstance(request, _Malformed):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"{method}: the request is not a valid message ({request.why})")
            return None

        return guarded(handler, admit, request_deserializer=tolerant, wrap_context=_BoundedContext)
