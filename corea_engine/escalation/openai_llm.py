"""The LLM tier on any OpenAI-compatible endpoint (openai SDK, chat completions, streaming).

The contract travels twice: in the messages (the system prompt asks for the format) and, for
JSON formats, as structured output (`response_format` json_schema, which OpenAI, vLLM, SGLang
and llama.cpp enforce; `response_format=False` leaves it out for endpoints that refuse it).
Whatever comes back is checked against the contract by the cascade, never trusted.

Message text is escaped (tokenization.escape_special_text) so that chat-marker strings in a
question cannot become turns in the endpoint's template.

Token counts come from the endpoint's usage report (stream_options.include_usage). When it
sends none, they are counted here and the Completion is marked `estimated`: with the tier's
tokenizer when one is given (exact up to the endpoint's template), else at 4 characters a token
(OpenAI's rule of thumb for English) plus 4 tokens a message. A call is never priced at zero.
Retries are the cascade's job, so the SDK's own are off.
"""

from __future__ import annotations

import math
import os
import time
from typing import AsyncIterator

from ..per_loop import PerLoop
from ..tokenization import encode_chat, escape_special_text, special_token_texts
from .base import Completion, EscalationClient, GenerationParams, LLMRequestError, LLMUnavailableError

CHARS_PER_TOKEN = 4  # the estimate without a tokenizer
TOKENS_PER_MESSAGE = 4  # role and turn markers


class OpenAILLM(EscalationClient):
    """tokenizer: the endpoint model's tokenizer (a transformers tokenizer), for counting when
    the endpoint reports no usage and for escaping its special-token texts; None: estimates."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY",
                 response_format: bool = True, tokenizer=None):
        self.model_name = model
        self.response_format = response_format
        self.tokenizer = tokenizer
        self._specials = special_token_texts(tokenizer) if tokenizer is not None else []
        # Local servers (vLLM, SGLang, llama.cpp) accept any key; hosted ones read it from env.
        self._options = dict(base_url=base_url, api_key=os.environ.get(api_key_env) or "unused", max_retries=0)
        self._clients = PerLoop(self._new_client, lambda client: client.close())  # its HTTP pool is per loop

    def _new_client(self):
        from openai import AsyncOpenAI

        return AsyncOpenAI(**self._options)

    def request_body(self, messages: list[dict], params: GenerationParams) -> dict:
        """The chat.completions.create arguments for one call."""
        fmt = params.contract
        body = dict(
            model=self.model_name, temperature=params.temperature, stream=True, stream_options={"include_usage": True},
            messages=[{**m, "content": escape_special_text(m["content"], self._specials)} for m in messages],
            # Without a cap the endpoint's default applies; the contract's worst case bounds it.
            max_tokens=params.max_new_tokens or (fmt.max_tokens if fmt is not None else None),
        )
        schema = fmt.json_schema() if fmt is not None and self.response_format else None
        if schema is not None:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": f"corea_{fmt.name}", "schema": schema, "strict": True}}
        return body

    def count_tokens(self, messages: list[dict], text: str) -> tuple[int, int]:
        """(prompt, completion) tokens counted here: the tier's tokenizer, else the estimate."""
        if self.tokenizer is not None:
            return len(encode_chat(self.tokenizer, messages)), len(self.tokenizer.encode(text, add_special_tokens=False))
        prompt = sum(math.ceil(len(m["content"]) / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE for m in messages)
        return prompt, max(1, math.ceil(len(text) / CHARS_PER_TOKEN))

    async def stream(self, messages: list[dict], params: GenerationParams) -> AsyncIterator[str | Completion]:
        import openai

        started = time.perf_counter()
        parts: list[str] = []
        usage = None
        finish = "stop"
        try:
            response = await self._clients.get().chat.completions.create(**self.request_body(messages, params),
                                                                  timeout=params.timeout_s)
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
        text = "".join(parts)
        if usage is not None and usage.prompt_tokens:
            prompt, completion, estimated = usage.prompt_tokens, usage.completion_tokens, False
        else:
            (prompt, completion), estimated = self.count_tokens(messages, text), True
        yield Completion(text, prompt, completion, self.model_name, finish, time.perf_counter() - started, estimated)

    async def close(self) -> None:
        """Close the SDK clients of every loop (PerLoop.close)."""
        await self._clients.close()
