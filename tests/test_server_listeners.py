"""Every listener takes its address from the configuration (issue #20, item 4), checked from the
socket table: gRPC, the HTTP front and /metrics of both services bind the server's host and nothing else."""

from __future__ import annotations

import ipaddress

import psutil
import pytest

from cascade_servers import SMALL
from corea_engine.cascade import Cascade, CascadeConfig
from corea_engine.server.app import ServerStartError, build_server
from corea_engine.server.background import ServerThread
from corea_engine.server.worker_service import WorkerService

LOOPBACK = {"127.0.0.1", "::1"}


def listening(ports: set[int] | None = None, pid: int | None = None) -> set[tuple[str, int]]:
    """(ip, port) of the LISTEN sockets of process `pid` (this one by default), on `ports` (None: all).
    An IPv4-mapped IPv6 address (gRPC binds 127.0.0.1 that way) is written as the IPv4 one."""
    def ip(text: str) -> str:
        address = ipaddress.ip_address(text)
        return str(getattr(address, "ipv4_mapped", None) or address)

    return {(ip(c.laddr.ip), c.laddr.port) for c in psutil.Process(pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and (ports is None or c.laddr.port in ports)}


@pytest.mark.parametrize("service", ["corea", "worker"])
@pytest.mark.parametrize("host, where", [("127.0.0.1", {"127.0.0.1"}), ("[::1]", {"::1"}), ("localhost", LOOPBACK)])
def test_every_listener_is_only_on_the_configured_host(slm_executor, service, host, where):
    if service == "corea":  # gRPC, the OpenAI HTTP front and /metrics
        cascade = Cascade(slm_executor, None, CascadeConfig(**SMALL, mode="slm_only"))
        server = ServerThread(lambda: build_server(cascade, host=host, http_port=0), metrics_port=0)
    else:
        server = ServerThread(lambda: build_server(worker=WorkerService(slm_executor), host=host), metrics_port=0)
    with server:
        ports = {server.server.port, server.server.metrics_port, server.server.http_port} - {None}
        assert len(ports) == (3 if service == "corea" else 2)
        sockets = listening(ports)
        assert {port for _, port in sockets} == ports, sockets  # both listen...
        assert {ip for ip, _ in sockets} <= where, sockets  # ...only where configured


def test_a_metrics_port_that_cannot_be_bound_is_a_start_error(slm_executor):
    cascade = Cascade(slm_executor, None, CascadeConfig(**SMALL, mode="slm_only"))
    with ServerThread(lambda: build_server(cascade, host="127.0.0.1"), metrics_port=0) as first:
        taken = first.server.metrics_port
        before = listening()
        second = ServerThread(lambda: build_server(cascade, host="127.0.0.1", http_port=0), metrics_port=taken)
        with pytest.raises(ServerStartError, match=f"cannot serve /metrics on 127.0.0.1:{taken}"):
            second.start()
        assert listening() == before  # the second's gRPC and HTTP listeners did not stay up
        second.close()


@pytest.mark.parametrize("host, metrics_port, message", [
    ("192.0.2.1", None, "cannot bind 192.0.2.1:0"),  # TEST-NET: not an address of this machine
    ("127.0.0.1", 70000, "cannot serve /metrics on 127.0.0.1:70000"),
])
def test_an_address_that_cannot_be_bound_is_a_start_error(slm_executor, host, metrics_port, message):
    server = ServerThread(lambda: build_server(worker=WorkerService(slm_executor), host=host), metrics_port=metrics_port)
    with pytest.raises(ServerStartError, match=message):
        server.start()
    server.close()


def test_a_grpc_port_in_use_is_a_start_error_not_a_shared_port(slm_executor):
    """gRPC's default SO_REUSEPORT would let a second server take half of the first one's calls."""
    with ServerThread(lambda: build_server(worker=WorkerService(slm_executor), host="127.0.0.1")) as first:
        port = first.server.port
        second = ServerThread(lambda: build_server(worker=WorkerService(slm_executor), host="127.0.0.1", port=port))
        with pytest.raises(ServerStartError, match=f"cannot bind 127.0.0.1:{port}"):
            second.start()
        second.close()
