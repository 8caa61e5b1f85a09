"""Flags shared by `corea serve` and `corea worker` (TLS, bearer tokens, request limits), and by
the commands that call a server (`corea solve/eval/bench/demo --address`: how to reach it).

Each flag's default comes from an environment variable (named in --help) so that a container
can be configured without a command line; tokens may also come from $COREA_AUTH_TOKENS.
"""

from __future__ import annotations

import os

from ..runtime.executor import MAX_NEW_TOKENS_LIMIT
from .common import COUNT, bounded


def add_security_args(p) -> None:
    g = p.add_argument_group("security and limits")
    g.add_argument("--tls-cert", default=os.environ.get("COREA_TLS_CERT"), help="PEM certificate chain ($COREA_TLS_CERT)")
    g.add_argument("--tls-key", default=os.environ.get("COREA_TLS_KEY"), help="PEM private key ($COREA_TLS_KEY)")
    g.add_argument("--tls-client-ca", default=os.environ.get("COREA_TLS_CLIENT_CA"),
                   help="PEM CA bundle: require client certificates signed by it, mTLS ($COREA_TLS_CLIENT_CA)")
    g.add_argument("--auth-tokens-file", default=os.environ.get("COREA_AUTH_TOKENS_FILE"),
                   help="bearer tokens, one 'name:token' per line ($COREA_AUTH_TOKENS_FILE); tokens in "
                        "$COREA_AUTH_TOKENS (comma-separated) are accepted too; either turns authentication on")
    g.add_argument("--max-message-bytes", type=bounded(int, 1, 1 << 31), default=os.environ.get("COREA_MAX_MESSAGE_BYTES"),
                   help="largest request message accepted (gRPC default: 4 MiB) ($COREA_MAX_MESSAGE_BYTES)")
    g.add_argument("--max-request-tokens", type=bounded(int, 1, MAX_NEW_TOKENS_LIMIT), default=os.environ.get("COREA_MAX_REQUEST_TOKENS"),
                   help="cap on a request's max_new_tokens; above it: OUT_OF_RANGE ($COREA_MAX_REQUEST_TOKENS)")
    g.add_argument("--max-inflight-per-client", type=COUNT, default=os.environ.get("COREA_MAX_INFLIGHT_PER_CLIENT"),
                   help="calls in flight per client (token, certificate or host); above it: RESOURCE_EXHAUSTED "
                        "($COREA_MAX_INFLIGHT_PER_CLIENT)")


def add_llm_client_args(p) -> None:
    """`corea serve`: how to reach a secured LLM tier (also llm_tls_* / llm_token_* in --config, COREA_LLM_*)."""
    g = p.add_argument_group("securing the call to the LLM tier (gRPC)")
    g.add_argument("--llm-tls-ca", default=None, help="PEM CA to trust for --llm-address (turns TLS on)")
    g.add_argument("--llm-tls-cert", default=None, help="PEM client certificate for mTLS")
    g.add_argument("--llm-tls-key", default=None, help="PEM client key for mTLS")
    g.add_argument("--llm-token-file", default=None, help="bearer token for the LLM server (else $COREA_LLM_TOKEN)")


def with_llm_client_args(config, args):
    """The cascade config with the --llm-tls-* / --llm-token-file flags applied."""
    from ..cascade_config import ConfigError
    from ..cli import CommandError

    try:
        return config.replace(llm_tls_ca_file=args.llm_tls_ca, llm_tls_cert_file=args.llm_tls_cert,
                              llm_tls_key_file=args.llm_tls_key, llm_token_file=args.llm_token_file)
    except ConfigError as err:
        raise CommandError(str(err)) from None


def security_from_args(args):
    """A ServerSecurity from the flags; CommandError (exit 2, one line) for unusable settings."""
    from ..cli import CommandError
    from ..server.auth import AuthConfigError, TokenTable
    from ..server.security import ServerSecurity
    from ..server.tls import ServerTLS, TLSConfigError

    try:
        if bool(args.tls_cert) != bool(args.tls_key):
            raise TLSConfigError("--tls-cert and --tls-key go together")
        if args.tls_client_ca and not args.tls_cert:
            raise TLSConfigError("--tls-client-ca (mTLS) needs --tls-cert and --tls-key")
        tls = ServerTLS(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
        if tls is not None:
            tls.credentials()  # read the files now, not on the first connection
        tokens = TokenTable.load(args.auth_tokens_file)
        return ServerSecurity(tls=tls, tokens=tokens if len(tokens) else None,
                              max_message_bytes=args.max_message_bytes, max_new_tokens=args.max_request_tokens,
                              max_inflight_per_client=args.max_inflight_per_client)
    except (TLSConfigError, AuthConfigError, ValueError) as err:
        raise CommandError(str(err)) from None


def add_client_args(p) -> None:
    """How a client command reaches a secured `corea serve` (with --address)."""
    g = p.add_argument_group("reaching a secured server (with --address)")
    g.add_argument("--tls-ca", default=None, help="PEM CA to trust for the server's certificate (turns TLS on)")
    g.add_argument("--tls-cert", default=None, help="PEM client certificate, for a server that requires mTLS")
    g.add_argument("--tls-key", default=None, help="PEM client key, with --tls-cert")
    g.add_argument("--tls-server-name", default=None, help="the name the server's certificate must carry, "
                   "when it is not the address's host")
    g.add_argument("--token-file", default=None, help="bearer token, its first line (else $COREA_TOKEN)")


def client_security(args) -> dict:
    """tls (a ClientTLS or None) and token (or None) from the flags; CommandError for unusable ones."""
    from ..cascade_config import ConfigError
    from ..cli import CommandError
    from ..escalation.grpc_security import read_token
    from ..server.tls import ClientTLS, TLSConfigError

    try:
        tls = None
        if args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name:
            tls = ClientTLS(ca_file=args.tls_ca, cert_file=args.tls_cert, key_file=args.tls_key,
                            server_name=args.tls_server_name)
            tls.credentials()  # read the files now: a bad path is one line, named
        return {"tls": tls, "token": read_token(args.token_file, "COREA_TOKEN")}
    except (TLSConfigError, ConfigError) as err:
        raise CommandError(str(err)) from None


def connect(args, *, aio: bool = False, timeout_s: float | None = None):
    """A CoreaClient (AsyncCoreaClient when aio: call inside the event loop) to args.address."""
    from ..client import DEFAULT_TIMEOUT_S, AsyncCoreaClient, CoreaClient

    kind = AsyncCoreaClient if aio else CoreaClient
    return kind(args.address, timeout_s=timeout_s or DEFAULT_TIMEOUT_S, **client_security(args))


def uses_client_security(args) -> bool:
    return any(getattr(args, name, None) for name in ("tls_ca", "tls_cert", "tls_key", "tls_server_name", "token_file"))
