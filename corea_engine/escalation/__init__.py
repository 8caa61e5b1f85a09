"""Escalation clients: how the cascade reaches its LLM tier.

* grpc_llm.GrpcLLM   - any engine over sglang.grpc.scheduler.SglangScheduler (`corea worker`, SGLang, vLLM)
* openai_llm.OpenAILLM - any OpenAI-compatible endpoint through the openai SDK
* local_llm.ExecutorLLM - an Executor in this process (a stand-in, no network)

`make_client(config)` (escalation.factory) picks one from configuration.
"""

from .base import Completion, EscalationClient, GenerationParams, LLMError, LLMRequestError, LLMUnavailableError

__all__ = [
    "Completion", "EscalationClient", "GenerationParams", "LLMError", "LLMRequestError", "LLMUnavailableError",
]
