"""Pick the escalation client from configuration."""

from __future__ import annotations

from ..cascade_config import CascadeConfig, ConfigError
from .base import EscalationClient


def make_client(config: CascadeConfig) -> EscalationClient | None:
    """The engine at llm_address (SglangScheduler protocol), or an OpenAI-compatible endpoint; None when neither is set."""
    if config.llm_address:
        from .grpc_llm import GrpcLLM
        from .grpc_security import llm_channel_security

        return GrpcLLM(config.llm_address, tokenizer=config.llm_tokenizer, **llm_channel_security(config))
    if config.llm_openai_base_url:
        if not config.llm_model:
            raise ConfigError("llm_openai_base_url needs llm_model (the endpoint's model name)")
        from .openai_llm import OpenAILLM

        return OpenAILLM(config.llm_openai_base_url, config.llm_model, api_key_env=config.llm_api_key_env)
    return None
