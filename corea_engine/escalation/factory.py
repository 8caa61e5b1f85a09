"""Pick the escalation client from configuration."""

from __future__ import annotations

from ..cascade_config import CascadeConfig, ConfigError
from .base import EscalationClient


def make_client(config: CascadeConfig) -> EscalationClient | None:
    """corea.v1.LLM at llm_address, or an OpenAI-compatible endpoint; None when neither is set."""
    if config.llm_address:
        from .grpc_llm import GrpcLLM
        from .grpc_security import llm_channel_security

        return GrpcLLM(config.llm_address, **llm_channel_security(config))
    if config.llm_openai_base_url:
        if not config.llm_model:
            raise ConfigError("llm_openai_base_url needs llm_model (the endpoint's model name)")
        from .openai_llm import OpenAILLM

        tokenizer = None
        if config.llm_tokenizer:
            from transformers import AutoTokenizer

            from ..models import ModelNotFoundError, resolve_model

            try:
                tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.llm_tokenizer).path)
            except (ModelNotFoundError, OSError, ValueError) as err:
                raise ConfigError(f"llm_tokenizer {config.llm_tokenizer!r}: {err}") from None
        return OpenAILLM(config.llm_openai_base_url, config.llm_model, api_key_env=config.llm_api_key_env,
                         response_format=config.llm_response_format, tokenizer=tokenizer)
    return None
