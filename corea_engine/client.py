"""The one client for corea.v1.Corea, blocking and asyncio, plaintext or TLS/mTLS, with a bearer token.

    with CoreaClient("127.0.0.1:50051") as client:                          # plaintext (loopback)
        result = client.solve(SolveRequest("What is 2 + 3?", threshold=0.7))   # a SolveResult
    CoreaClient("corea.internal:50051", tls=ClientTLS(ca_file="ca.pem"), token="s3cret")
    CoreaClient(address, tls=ClientTLS("ca.pem", cert_file="me.pem", key_file="me.key"))  # mTLS

    async with AsyncCoreaClient(address, tls=..., token=...) as client:     # inside an event loop
        result = await client.solve(req)
        async for event in client.stream(req): ...                         # corea.v1.SolveEvent

`corea solve/eval/bench/demo --address` build theirs from the command line with
commands.security_args.connect. Errors are grpc.RpcError with the server's canonical status code
and message; a missing or non-PEM certificate file is server.tls.TLSConfigError, named.
A token without TLS travels in clear text: fine on loopback, not across an untrusted network.
"""

from __future__ import annotations

from .cascade import SolveRequest, SolveResult
from .protos import corea_pb2, corea_pb2_grpc
from .server.convert import from_response, from_solve_request
from .server.tls import ClientTLS, client_channel

DEFAULT_TIMEOUT_S = 300.0


class _Client:
    _aio = False

    def __init__(self, address: str, *, tls: ClientTLS | None = None, token: str | None = None,
                 timeout_s: float | None = DEFAULT_TIMEOUT_S, options=()):
        self.address = address
        self.timeout_s = timeout_s  # each call's deadline unless the call gives its own (seconds)
        self.tls = tls
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.channel = client_channel(address, tls, aio=self._aio, options=options)
        self.stub = corea_pb2_grpc.CoreaStub(self.channel)

    def _call(self, timeout_s: float | None, req: SolveRequest | None = None) -> dict:
        """The deadline: the call's timeout_s, else the request's, else the client's."""
        return {"timeout": timeout_s or (req.timeout_s if req else None) or self.timeout_s, "metadata": self._metadata}

    @staticmethod
    def _batch(reqs: list[SolveRequest]) -> corea_pb2.SolveBatchRequest:
        return corea_pb2.SolveBatchRequest(requests=[from_solve_request(r) for r in reqs])


class CoreaClient(_Client):
    """Blocking calls (any thread without a running event loop)."""

    def solve(self, req: SolveRequest, *, timeout_s: float | None = None) -> SolveResult:
        return from_response(self.stub.Solve(from_solve_request(req), **self._call(timeout_s, req)))

    def stream(self, req: SolveRequest, *, timeout_s: float | None = None):
        """corea.v1.SolveEvent messages as they arrive (cancel() the iterator to stop early)."""
        return self.stub.SolveStream(from_solve_request(req), **self._call(timeout_s, req))

    def solve_batch(self, reqs: list[SolveRequest], *, timeout_s: float | None = None) -> list[SolveResult]:
        """Results in request order; the server counts each item toward its limits."""
        response = self.stub.SolveBatch(self._batch(reqs), **self._call(timeout_s))
        return [from_response(r) for r in response.responses]

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncCoreaClient(_Client):
    """asyncio calls; make it inside the event loop that uses it (a grpc.aio channel belongs to one)."""

    _aio = True

    async def solve(self, req: SolveRequest, *, timeout_s: float | None = None) -> SolveResult:
        return from_response(await self.stub.Solve(from_solve_request(req), **self._call(timeout_s, req)))

    async def stream(self, req: SolveRequest, *, timeout_s: float | None = None):
        """corea.v1.SolveEvent messages as they arrive."""
        async for event in self.stub.SolveStream(from_solve_request(req), **self._call(timeout_s, req)):
            yield event

    async def solve_batch(self, reqs: list[SolveRequest], *, timeout_s: float | None = None) -> list[SolveResult]:
        response = await self.stub.SolveBatch(self._batch(reqs), **self._call(timeout_s))
        return [from_response(r) for r in response.responses]

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Wait until the channel connects (TimeoutError after timeout_s)."""
        import asyncio

        await asyncio.wait_for(self.channel.channel_ready(), timeout_s)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
