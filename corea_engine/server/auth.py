"""Bearer-token authentication for the gRPC services.

Clients send `authorization: Bearer <token>` metadata. Tokens come from a file and/or an
environment variable, one entry per line (file) or per comma (variable), each `name:token` or a
bare `token` (its name is then `token-<first 8 hex digits of its SHA-256>`); blank lines and `#`
comments are skipped. The name is the client's identity (logs, per-client limits). Tokens may not
contain ':' ',' or whitespace (`python -c "import secrets; print(secrets.token_urlsafe(32))"`).

BearerTokenAuth refuses a call without a valid token with UNAUTHENTICATED before the request
is even deserialized: the service, and so every model, is never reached. Health checking
(grpc.health.v1) stays open so load balancers and orchestrators can probe without a token;
reflection needs one like the services.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import grpc

from ._handlers import deny_handler

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


class AuthConfigError(ValueError):
    """A token file or variable that cannot be used; the message names it."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenTable:
    """Accepted tokens -> client names. Only SHA-256 digests are kept in memory."""

    def __init__(self, entries: dict[str, str] | None = None):
        self._names: dict[str, str] = {}  # digest -> name
        for token, name in (entries or {}).items():
            self.add(token, name)

    def add(self, token: str, name: str | None = None) -> None:
        if not token or any(c.isspace() or c in ":," for c in token):
            raise AuthConfigError("a token must be non-empty, without ':' ',' or whitespace")
        digest = _digest(token)
        self._names[digest] = name or f"token-{digest[:8]}"

    def __len__(self) -> int:
        return len(self._names)

    def identify(self, token: str | None) -> str | None:
        """The client name for a token, or None. A dict lookup on the digest: no timing leak of the token."""
        return self._names.get(_digest(token)) if token else None

    def add_entries(self, entries, source: str) -> None:
        for number, raw in entries:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, _, token = line.rpartition(":")
            try:
                self.add(token.strip(), name.strip() or None)
            except AuthConfigError as err:
                raise AuthConfigError(f"{source} entry {number}: {err}") from None

    @classmethod
    def load(cls, file: str | Path | None = None, env_var: str | None = "COREA_AUTH_TOKENS",
             env: dict | None = None) -> "TokenTable":
        """Tokens from `file` and from the variable `env_var` (either may be absent)."""
        table = cls()
        if file is not None:
            path = Path(file)
            if not path.is_file():
                raise AuthConfigError(f"token file {path} does not exist")
            table.add_entries(enumerate(path.read_text().splitlines(), 1), f"token file {path}")
            if not len(table):
                raise AuthConfigError(f"token file {path} holds no token")
        env = os.environ if env is None else env
        if env_var and env.get(env_var, "").strip():
            table.add_entries(enumerate(env[env_var].split(","), 1), f"${env_var}")
        return table


def bearer_token(metadata) -> str | None:
    """The token of an `authorization: Bearer <token>` entry, if any."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class BearerTokenAuth(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: TokenTable, open_prefixes: tuple[str, ...] = OPEN_PREFIXES):
        if not len(tokens):
            raise AuthConfigError("authentication is on but no token is configured")
        self.tokens = tokens
        self.open_prefixes = open_prefixes
        self.refused = 0  # calls refused so far (tests and logs)

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(self.open_prefixes):
            return await continuation(handler_call_details)
        token = bearer_token(handler_call_details.invocation_metadata)
        if self.tokens.identify(token) is not None:
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)  # only to learn the method's kind; nothing runs
        if handler is None:
            return None
        self.refused += 1
        why = "no bearer token (send 'authorization: Bearer <token>' metadata)" if token is None else "the bearer token is not valid"
        return deny_handler(handler, grpc.StatusCode.UNAUTHENTICATED, f"{method}: {why}")


def client_identity(context, tokens: TokenTable | None = None) -> str:
    """Who is calling: the token's name, else the TLS client certificate's common name, else the peer's host."""
    name = tokens.identify(bearer_token(context.invocation_metadata())) if tokens is not None else None
    auth = context.auth_context() or {}
    common_name = auth.get("x509_common_name")
    return identity(name, common_name[0].decode(errors="replace") if common_name else None, peer_host(context.peer()))


def identity(token_name: str | None, common_name: str | None, host: str) -> str:
    """The one naming of a client, whatever the transport: 'token:NAME', 'cert:CN' or 'peer:HOST'."""
    if token_name is not None:
        return f"token:{token_name}"
    if common_name:
        return f"cert:{common_name}"
    return f"peer:{host}"


def peer_host(peer: str) -> str:
    """'ipv4:127.0.0.1:5555' -> '127.0.0.1'; 'ipv6:[::1]:5555' -> '::1'; unix sockets as given."""
    kind, _, rest = (peer or "").partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]").replace("%5B", "").replace("%5D", "")
    return peer or "unknown"
