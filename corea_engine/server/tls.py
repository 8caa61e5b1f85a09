"""TLS for the gRPC services and their clients: PEM files -> grpc credentials.

    ServerTLS("server.pem", "server.key").credentials()                   # TLS
    ServerTLS("server.pem", "server.key", client_ca_file="ca.pem")        # mTLS: client certs required
    ClientTLS(ca_file="ca.pem").credentials()                             # trust this CA
    ClientTLS(ca_file="ca.pem", cert_file="client.pem", key_file="client.key")  # present a client cert
    client_channel("host:50051", ClientTLS(ca_file="ca.pem"), aio=True)   # a channel, TLS or plaintext

Files are read and checked when credentials are made, so a wrong path or a non-PEM file is
refused at start-up with the file named, not on the first handshake.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


class TLSConfigError(ValueError):
    """A certificate or key file that is missing or not PEM; the message names it."""


def read_pem(path: str | Path, what: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise TLSConfigError(f"{what} file {p} does not exist")
    data = p.read_bytes()
    if b"-----BEGIN " not in data:
        raise TLSConfigError(f"{what} file {p} is not PEM (no '-----BEGIN' line)")
    return data


@dataclass(frozen=True)
class ServerTLS:
    cert_file: str
    key_file: str
    client_ca_file: str | None = None  # set: every client must present a certificate signed by it

    def credentials(self) -> grpc.ServerCredentials:
        cert = read_pem(self.cert_file, "TLS certificate")
        key = read_pem(self.key_file, "TLS key")
        client_ca = read_pem(self.client_ca_file, "TLS client CA") if self.client_ca_file else None
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None)


@dataclass(frozen=True)
class ClientTLS:
    ca_file: str | None = None  # None: the system's trusted roots
    cert_file: str | None = None  # with key_file: a client certificate for mTLS
    key_file: str | None = None
    server_name: str | None = None  # check the certificate against this name instead of the address's host

    def __post_init__(self):
        if (self.cert_file is None) != (self.key_file is None):
            raise TLSConfigError("a client certificate needs both cert_file and key_file")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=read_pem(self.ca_file, "TLS CA") if self.ca_file else None,
            private_key=read_pem(self.key_file, "TLS client key") if self.key_file else None,
            certificate_chain=read_pem(self.cert_file, "TLS client certificate") if self.cert_file else None,
        )

    def channel_options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def client_channel(address: str, tls: ClientTLS | None = None, *, aio: bool = False, options=()):
    """A channel to address (grpc.aio when aio): TLS (or mTLS) with `tls`, plaintext without.

    Raises TLSConfigError naming a missing or non-PEM file.
    """
    module = grpc.aio if aio else grpc
    options = [*options, *(tls.channel_options() if tls else [])]
    if tls is None:
        return module.insecure_channel(address, options=options)
    return module.secure_channel(address, tls.credentials(), options=options)
