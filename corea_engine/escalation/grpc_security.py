"""TLS and the bearer token for the cascade's gRPC LLM call, from CascadeConfig.

    llm_tls_ca_file = "ca.pem"            # TLS, trusting this CA (the llm_tls_* fields, or
    llm_tls_cert_file = "client.pem"      #   COREA_LLM_TLS_CA_FILE ... in the environment)
    llm_tls_key_file = "client.key"       # with the cert: mTLS
    llm_token_file = "llm.token"          # else the token is read from $COREA_LLM_TOKEN (llm_token_env)

A token without TLS travels in clear text: fine on loopback or inside a mesh that encrypts, not
across an untrusted network.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..cascade_config import CascadeConfig, ConfigError
from ..server.tls import ClientTLS, TLSConfigError


def read_token(file: str | None, env_var: str | None, env: dict | None = None) -> str | None:
    """The token in `file` (its first non-blank line), else in the variable `env_var`, else None."""
    if file:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"token file {path} does not exist")
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not lines:
            raise ConfigError(f"token file {path} is empty")
        return lines[0]
    env = os.environ if env is None else env
    return (env.get(env_var) or "").strip() or None if env_var else None


def llm_channel_security(config: CascadeConfig, env: dict | None = None) -> dict:
    """Keyword arguments for GrpcLLM: tls (a ClientTLS or None) and token (or None)."""
    tls = None
    if config.llm_tls_ca_file or config.llm_tls_cert_file or config.llm_tls_server_name:
        try:
            tls = ClientTLS(ca_file=config.llm_tls_ca_file, cert_file=config.llm_tls_cert_file,
                            key_file=config.llm_tls_key_file, server_name=config.llm_tls_server_name)
            tls.credentials()  # read the files now: a bad path fails at start-up, named
        except TLSConfigError as err:
            raise ConfigError(str(err)) from None
    return {"tls": tls, "token": read_token(config.llm_token_file, config.llm_token_env, env)}
