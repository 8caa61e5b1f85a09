"""The LLM tier over gRPC: the generated corea.v1.LLM stub on a grpc.aio channel.

Deadlines: each call carries the cascade's remaining time as the gRPC deadline and as
deadline_ms. The channel reconnects quickly (100 ms to 1 s backoff) so a restarted LLM server
is found again within a second rather than gRPC's default of up to two minutes.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import grpc

from ..protos import llm_pb2, llm_pb2_grpc
from .base import Completion, EscalationClient, GenerationParams, LLMRequestError, LLMUnavailableError

# Codes that mean "this request is wrong": retrying cannot help and the LLM is not unhealthy.
_REQUEST_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
}

CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


class GrpcLLM(EscalationClient):
    def __init__(self, address: str, *, channel_options=CHANNEL_OPTIONS, tls=None, token: str | None = None):
        self.address = address
        self.model_name = address  # replaced by the model the server reports
        self._options = list(channel_options) + (tls.channel_options() if tls else [])
        self._credentials = tls.credentials() if tls else None  # tls: server.tls.ClientTLS
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._channel: grpc.aio.Channel | None = None
        self._loop = None

    def _stub(self) -> llm_pb2_grpc.LLMStub:
        # An aio channel belongs to the event loop it was made in.
        loop = asyncio.get_running_loop()
        if self._channel is None or self._loop is not loop:
            self._channel = (grpc.aio.secure_channel(self.address, self._credentials, options=self._options)
                             if self._credentials else grpc.aio.insecure_channel(self.address, options=self._options))
            self._loop = loop
            self._stub_obj = llm_pb2_grpc.LLMStub(self._channel)
        return self._stub_obj

    @staticmethod
    def to_request(messages: list[dict], params: GenerationParams) -> llm_pb2.GenerateRequest:
        fmt = params.contract
        return llm_pb2.GenerateRequest(
            messages=[llm_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in messages],
            max_new_tokens=params.max_new_tokens or 0,
            temperature=params.temperature,
            request_id=params.request_id,
            contract=fmt.name if fmt is not None else "",
            max_reasoning_chars=fmt.max_reasoning_chars if fmt is not None else 0,
            max_answer_chars=fmt.max_answer_chars if fmt is not None else 0,
            deadline_ms=int(params.timeout_s * 1000) if params.timeout_s else 0,
        )

    async def stream(self, messages: list[dict], params: GenerationParams) -> AsyncIterator[str | Completion]:
        call = self._stub().GenerateStream(self.to_request(messages, params), timeout=params.timeout_s, metadata=self._metadata)
        done = False
        try:
            async for chunk in call:
                if chunk.WhichOneof("chunk") == "result":
                    r = chunk.result
                    done = True
                    if r.model:
                        self.model_name = r.model
                    yield Completion(r.text, r.prompt_tokens, r.completion_tokens, r.model, r.finish_reason, r.latency_ms / 1000)
                elif chunk.text:
                    yield chunk.text
        except grpc.aio.AioRpcError as err:
            message = f"LLM at {self.address}: {err.code().name}: {err.details()}"
            if err.code() in _REQUEST_ERRORS:
                raise LLMRequestError(message) from None
            raise LLMUnavailableError(message) from None
        finally:
            if not done:
                call.cancel()

    async def probe(self, timeout_s: float = 1.0) -> str | None:
        """grpc.health.v1 on the LLM server (open without a token): None when it is SERVING."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        self._stub()  # the channel of this loop
        try:
            reply = await health_pb2_grpc.HealthStub(self._channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError as err:
            return f"LLM at {self.address}: {err.code().name}: {err.details()}"
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            return f"LLM at {self.address}: health {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
        return None

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
