"""The escalation tier's interface: generate text for chat messages, count the tokens.

A client is cheap to call concurrently and raises `LLMUnavailableError` for anything the
cascade may retry (timeout, connection refused, server overloaded) and `LLMRequestError` for
a request the LLM refuses (retrying would not help).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import AsyncIterator

from ..contract import Format


class LLMError(RuntimeError):
    """The escalation call failed."""


class LLMUnavailableError(LLMError):
    """Timeout, unreachable or overloaded: worth a retry, counts against the circuit breaker."""


class LLMRequestError(LLMError):
    """The LLM refused this request (invalid argument): retrying would not help."""


class LLMContractError(LLMError):
    """The LLM answered, but its text does not satisfy the contract (set by the cascade)."""


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    model: str
    finish_reason: str = "stop"
    latency_s: float = 0.0
    estimated: bool = False  # token counts counted by the client: the endpoint reported none


@dataclass(frozen=True)
class GenerationParams:
    """What the cascade asks of the LLM for one question."""

    contract: Format | None = None  # the LLM answers under the same contract as the SLM
    max_new_tokens: int | None = None
    temperature: float = 0.0
    request_id: str = ""
    timeout_s: float | None = None  # the call's deadline, already net of the caller's own


class EscalationClient(ABC):
    """An LLM reachable from the cascade."""

    model_name: str = "llm"

    @abstractmethod
    def stream(self, messages: list[dict], params: GenerationParams) -> AsyncIterator[str | Completion]:
        """Yield text chunks as they come, then exactly one Completion."""

    async def generate(self, messages: list[dict], params: GenerationParams) -> Completion:
        async for item in self.stream(messages, params):
            if isinstance(item, Completion):
                return item
        raise LLMUnavailableError("the LLM stream ended without a result")

    async def probe(self, timeout_s: float = 1.0) -> str | None:
        """Why the LLM cannot be reached now, or None when it can (or when this client cannot tell)."""
        return None

    async def close(self) -> None:
        """Release channels and sessions."""
