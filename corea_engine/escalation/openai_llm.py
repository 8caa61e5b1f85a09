"""The LLM tier on any OpenAI-compatible endpoint (openai SDK, chat completions, streaming).

The contract travels in the messages (the system prompt asks for the format); the endpoint has
no grammar, so the cascade parses the answer leniently. Token counts come from the endpoint's
usage report (stream_options.include_usage); endpoints that omit it report 0 tokens.
Retries are the cascade's job, so the SDK's own are off.
"""

from __future__ import annotations

import os
import time
from typing import AsyncIterator

from .base import Completion, EscalationClient, GenerationParams, LLMRequestError, LLMUnavailableError


class OpenAILLM(EscalationClient):
    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY"):
        from openai import AsyncOpenAI

        self.model_name = model
        # Local servers (vLLM, SGLang, llama.cpp) accept any key; hosted ones read it from env.
        self._client = AsyncOpenAI(base_url=base_url, api_key=os.environ.get(api_key_env) or "unused", max_retries=0)

    async def stream(self, messages: list[dict], params: GenerationParams) -> AsyncIterator[str | Completion]:
        import openai

        started = time.perf_counter()
        parts: list[str] = []
        usage = None
        finish = "stop"
        try:
            response = await self._client.chat.completions.create(
                model=self.model_name, messages=messages, temperature=params.temperature,
                max_tokens=params.max_new_tokens, stream=True, stream_options={"include_usage": True},
                timeout=params.timeout_s,
            )
            async for chunk in response:
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices:
                    if choice.delta and choice.delta.content:
                        parts.append(choice.delta.content)
                        yield choice.delta.content
                    if choice.finish_reason:
                        finish = choice.finish_reason
        except (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as err:
            raise LLMUnavailableError(f"OpenAI endpoint: {type(err).__name__}: {err}") from None
        except openai.APIStatusError as err:
            raise LLMRequestError(f"OpenAI endpoint refused the request: {err.status_code}: {err.message}") from None
        yield Completion(
            "".join(parts),
            usage.prompt_tokens if usage else 0,
            usage.completion_tokens if usage else 0,
            self.model_name,
            finish,
            time.perf_counter() - started,
        )

    async def close(self) -> None:
        await self._client.close()
