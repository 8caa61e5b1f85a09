"""What build_server(security=...) needs to harden a server: TLS, tokens and limits in one place.

    security = ServerSecurity(tls=ServerTLS("server.pem", "server.key"), tokens=TokenTable.load("tokens.txt"),
                              max_message_bytes=1 << 20, max_new_tokens=512, max_inflight_per_client=8)
    server = build_server(cascade, port=50051, security=security)

Each part is optional; ServerSecurity() only adds request hygiene (hygiene.py: undecodable requests
are INVALID_ARGUMENT, status details are bounded). Interceptor order: hygiene (its deserializer is
the one that runs), then authentication (an unauthenticated call is refused before its bytes are
even decoded), then the per-request limits, then the server-wide concurrency limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from .auth import BearerTokenAuth, TokenTable
from .hygiene import RequestHygiene
from .limits import RequestLimits
from .tls import ServerTLS


@dataclass
class ServerSecurity:
    tls: ServerTLS | None = None
    tokens: TokenTable | None = None  # set: every call but health checks needs a bearer token
    max_message_bytes: int | None = None  # None: gRPC's default (4 MiB received)
    max_new_tokens: int | None = None  # cap on a request's max_new_tokens
    max_inflight_per_client: int | None = None

    def __post_init__(self):
        if self.max_message_bytes is not None and self.max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be >= 1, got {self.max_message_bytes}")
        self._interceptors: list[grpc.aio.ServerInterceptor] = [RequestHygiene()]
        if self.tokens is not None:
            self._interceptors.append(BearerTokenAuth(self.tokens))
        if self.max_new_tokens is not None or self.max_inflight_per_client is not None:
            self._interceptors.append(RequestLimits(max_new_tokens=self.max_new_tokens, tokens=self.tokens,
                                                    max_inflight_per_client=self.max_inflight_per_client))

    @property
    def auth(self) -> BearerTokenAuth | None:
        return next((i for i in self._interceptors if isinstance(i, BearerTokenAuth)), None)

    @property
    def limits(self) -> RequestLimits | None:
        return next((i for i in self._interceptors if isinstance(i, RequestLimits)), None)

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """To run before the server's own interceptors."""
        return list(self._interceptors)

    def options(self) -> list[tuple[str, int]]:
        if self.max_message_bytes is None:
            return []
        return [("grpc.max_receive_message_length", self.max_message_bytes)]

    def bind(self, server: grpc.aio.Server, address: str) -> int:
        """Add the listening port (TLS when configured); the bound port, 0 when it could not bind."""
        try:
            if self.tls is not None:
                return server.add_secure_port(address, self.tls.credentials())
            return server.add_insecure_port(address)
        except RuntimeError:  # grpc.aio raises where grpc returns 0 ("Failed to bind to address")
            return 0

    def describe(self) -> str:
        """One line for the start-up banner."""
        parts = ["mTLS" if self.tls and self.tls.client_ca_file else "TLS" if self.tls else "plaintext"]
        if self.tokens is not None:
            parts.append(f"bearer tokens ({len(self.tokens)})")
        if self.max_new_tokens is not None:
            parts.append(f"max_new_tokens <= {self.max_new_tokens}")
        if self.max_inflight_per_client is not None:
            parts.append(f"<= {self.max_inflight_per_client} in flight per client")
        if self.max_message_bytes is not None:
            parts.append(f"messages <= {self.max_message_bytes} bytes")
        return ", ".join(parts)
