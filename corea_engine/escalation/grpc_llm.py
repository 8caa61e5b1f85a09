"""The LLM tier over the engines' gRPC protocol (sglang.grpc.scheduler.SglangScheduler).

Any engine that speaks it is a tier: `corea worker`, SGLang `--grpc-mode`, vLLM `serve --grpc`.
The messages go through the tier's chat template (its tokenizer: runtime.scheduler_client), the
contract's grammar travels as `ebnf_grammar`, and the streamed token ids are detokenized here.

Deadlines: each call carries the cascade's remaining time as the gRPC deadline; a call that
ends early (the client left, a deadline) is cancelled, which aborts it in the engine. The
tokenizer is fetched on the first call, so the cascade starts (and answers degraded) while the
LLM is down; a fetch that fails is retried like any unavailable call.
"""

from __future__ import annotations

import time
import uuid
from typing import AsyncIterator

import grpc

from ..runtime.scheduler_client import CHANNEL_OPTIONS, REQUEST_ERRORS, SchedulerClient, TokenizerError, pb
from ..runtime.sequence import Detokenizer
from .base import Completion, EscalationClient, GenerationParams, LLMRequestError, LLMUnavailableError


class GrpcLLM(EscalationClient):
    """address: host:port of the engine; tokenizer: a local folder instead of GetTokenizer;
    tls (server.tls.ClientTLS) and token as in escalation.grpc_security."""

    def __init__(self, address: str, *, tokenizer: str | None = None, channel_options=CHANNEL_OPTIONS, tls=None,
                 token: str | None = None):
        self.client = SchedulerClient(address, tokenizer=tokenizer, tls=tls, token=token,
                                      channel_options=channel_options)
        self.address = address
        self.model_name = address  # until the engine reports its model (a probe or the first call)

    def to_request(self, messages: list[dict], params: GenerationParams) -> pb.GenerateRequest:
        fmt = params.contract
        max_new = params.max_new_tokens or (fmt.max_tokens if fmt is not None else None)
        sampling = pb.SamplingParams(temperature=params.temperature, max_new_tokens=max_new)
        if fmt is not None:
            sampling.ebnf_grammar = fmt.ebnf()
        return pb.GenerateRequest(
            request_id=params.request_id or f"llm-{uuid.uuid4().hex[:12]}",
            tokenized=pb.TokenizedInput(input_ids=self.client.encode(messages)),
            sampling_params=sampling,
            stream=True,
            logprob_start_len=-1,
        )

    async def stream(self, messages: list[dict], params: GenerationParams) -> AsyncIterator[str | Completion]:
        started = time.perf_counter()
        call = None
        done = False
        try:
            await self.client.connect(params.timeout_s)
            self.model_name = self.client.model_name
            try:
                request = self.to_request(messages, params)
            except ValueError as err:  # the chat template rewrote a message (tokenization.ChatTemplateError)
                raise LLMRequestError(f"LLM at {self.address}: {err}") from None
            remaining = None if params.timeout_s is None else max(params.timeout_s - (time.perf_counter() - started), 0.001)
            call = self.client.stub.Generate(request, timeout=remaining, metadata=self.client.metadata)
            detokenizer = Detokenizer(self.client.tokenizer)
            text = ""
            async for response in call:
                if response.WhichOneof("response") == "chunk":
                    new = [t for t in response.chunk.token_ids if t not in self.client.eos_token_ids]
                    delta = "".join(detokenizer.add(t) for t in new)
                    if delta:
                        text += delta
                        yield delta
                    continue
                complete = response.complete
                done = True
                if complete.finish_reason == "abort":
                    raise LLMUnavailableError(f"LLM at {self.address} aborted the request")
                yield Completion(text, complete.prompt_tokens or len(request.tokenized.input_ids),
                                 complete.completion_tokens or len(detokenizer.ids), self.model_name,
                                 complete.finish_reason or "stop", time.perf_counter() - started)
                return
        except grpc.aio.AioRpcError as err:
            message = f"LLM at {self.address}: {err.code().name}: {err.details()}"
            if err.code() in REQUEST_ERRORS:
                raise LLMRequestError(message) from None
            raise LLMUnavailableError(message) from None
        except TokenizerError as err:
            raise LLMUnavailableError(str(err)) from None
        finally:
            if call is not None and not done:
                call.cancel()  # a cancelled stream aborts the request in the engine

    async def probe(self, timeout_s: float = 1.0) -> str | None:
        """Is the engine reachable? None when it answers GetModelInfo (every engine speaking the
        protocol serves it, and it runs no model), else why not. The answer names the model:
        `model_name` is the engine's from then on."""
        try:
            await self.client.model_info(timeout_s)
        except grpc.aio.AioRpcError as err:
            return f"LLM at {self.address}: {err.code().name}: {err.details()}"
        self.model_name = self.client.model_name
        return None

    async def close(self) -> None:
        await self.client.close()
