"""A small blocking client for corea.v1.Corea (for `corea solve --address`, demo, evaluation).

    with CoreaClient("127.0.0.1:50051") as client:
        result = client.solve(SolveRequest("What is 2 + 3?", threshold=0.7))   # a SolveResult

Errors are grpc.RpcError with the server's canonical status code and message.
"""

from __future__ import annotations

import grpc

from .cascade import SolveRequest, SolveResult
from .protos import corea_pb2, corea_pb2_grpc
from .server.convert import from_response, from_solve_request


class CoreaClient:
    def __init__(self, address: str, *, timeout_s: float | None = 300.0):
        self.address = address
        self.timeout_s = timeout_s
        self.channel = grpc.insecure_channel(address)
        self.stub = corea_pb2_grpc.CoreaStub(self.channel)

    def solve(self, req: SolveRequest, *, timeout_s: float | None = None) -> SolveResult:
        response = self.stub.Solve(from_solve_request(req), timeout=timeout_s or self.timeout_s)
        return from_response(response)

    def stream(self, req: SolveRequest, *, timeout_s: float | None = None):
        """corea.v1.SolveEvent messages as they arrive."""
        return self.stub.SolveStream(from_solve_request(req), timeout=timeout_s or self.timeout_s)

    def solve_batch(self, reqs: list[SolveRequest], *, timeout_s: float | None = None) -> list[SolveResult]:
        response = self.stub.SolveBatch(
            corea_pb2.SolveBatchRequest(requests=[from_solve_request(r) for r in reqs]), timeout=timeout_s or self.timeout_s)
        return [from_response(r) for r in response.responses]

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
