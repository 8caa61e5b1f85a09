"""Per-request limits, each with its own status code and message.

* max_new_tokens above the server's cap -> OUT_OF_RANGE (the field is valid, just more than this
  server grants; 0 still means "server default"). For SolveBatch every item is checked.
* more than max_inflight_per_client calls of one client in flight -> RESOURCE_EXHAUSTED. The
  client is its token's name, else its TLS certificate's common name, else its peer host
  (auth.client_identity). A SolveBatch counts as one call per item.
* messages over max_message_bytes are refused by gRPC itself with RESOURCE_EXHAUSTED
  ("Received message larger than max"), see ServerSecurity.options().

The rules live in token_cap_error() and acquire(), which the HTTP front applies too (400 and 429).
The server-wide limit (app.ConcurrencyLimit) comes after these, so a client refused here takes no
server-wide slot. Only the methods under `prefix` (interceptors.LIMITED) are limited: health checks always answer.
"""

from __future__ import annotations

from collections import Counter

import grpc

from ._handlers import guarded
from .auth import TokenTable, client_identity
from .interceptors import LIMITED, work_items


class ClientLimitExceeded(RuntimeError):
    """A client already has its limit of calls in flight; the message names it and the limit."""


class RequestLimits(grpc.aio.ServerInterceptor):
    def __init__(self, *, max_new_tokens: int | None = None, max_inflight_per_client: int | None = None,
                 tokens: TokenTable | None = None, prefix: tuple[str, ...] = LIMITED):
        if max_new_tokens is not None and max_new_tokens < 1:
            raise ValueError(f"the max_new_tokens cap must be >= 1, got {max_new_tokens}")
        if max_inflight_per_client is not None and max_inflight_per_client < 1:
            raise ValueError(f"max_inflight_per_client must be >= 1, got {max_inflight_per_client}")
        self.max_new_tokens = max_new_tokens
        self.max_inflight_per_client = max_inflight_per_client
        self.tokens = tokens
        self.prefix = prefix
        self.inflight: Counter[str] = Counter()  # client -> calls in flight (all on the server's one event loop)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self.prefix):
            return handler
        return guarded(handler, self._admit)

    # -- the rules, for either transport (the HTTP front calls these too) --------------------
    def token_cap_error(self, asked: int, where: str = "max_new_tokens") -> str | None:
        """Why `asked` new tokens exceed the cap, or None when they do not."""
        if self.max_new_tokens is None or asked <= self.max_new_tokens:
            return None
        return f"{where} is {asked}; this server grants at most {self.max_new_tokens} new tokens per request"

    def acquire(self, client: str, weight: int = 1):
        """Count `weight` calls of `client` in flight: a release callback, or ClientLimitExceeded."""
        if self.max_inflight_per_client is None:
            return None
        if self.inflight[client] + weight > self.max_inflight_per_client:
            raise ClientLimitExceeded(
                f"client {client} has {self.inflight[client]} request(s) in flight and asked for "
                f"{weight} more; the per-client limit is {self.max_inflight_per_client}; retry later")
        self.inflight[client] += weight

        def release():
            self.inflight[client] -= weight
            if self.inflight[client] <= 0:
                del self.inflight[client]

        return release

    async def _admit(self, request, context):
        items = list(getattr(request, "requests", None) or [request])  # a batch, or one request
        for i, item in enumerate(items):
            why = self.token_cap_error(getattr(item, "max_new_tokens", 0),
                                       f"requests[{i}].max_new_tokens" if item is not request else "max_new_tokens")
            if why is not None:
                await context.abort(grpc.StatusCode.OUT_OF_RANGE, f"{why} (0 takes the server default)")
        if self.max_inflight_per_client is None:
            return None
        try:
            return self.acquire(client_identity(context, self.tokens), work_items(request))
        except ClientLimitExceeded as err:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(err))
