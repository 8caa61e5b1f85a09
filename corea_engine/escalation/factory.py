"""Pick the escalation client from configuration."""

from __future__ import annotations

from ..cascade_config import CascadeConfig, ConfigError
from .base import EscalationClient


def make_client(config: CascadeConfig) -> EscalationClient | None:
    """The engine at llm_address (SglangScheduler protocol), or an OpenAI-compatible endpoint; None when neither is set."""
    if config.llm_address:
        from .grpc_llm import GrpcLLM
        from .grpc_security import llm_channel_security

        folder = str(_tokenizer_folder(config.llm_tokenizer)) if config.llm_tokenizer else None
        return GrpcLLM(config.llm_address, tokenizer=folder, **llm_channel_security(config))
    if config.llm_openai_base_url:
        if not config.llm_model:
            raise ConfigError("llm_openai_base_url needs llm_model (the endpoint's model name)")
        from .openai_llm import OpenAILLM

        tokenizer = None
        if config.llm_tokenizer:
            from transformers import AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(_tokenizer_folder(config.llm_tokenizer))
            except (OSError, ValueError) as err:
                raise ConfigError(f"llm_tokenizer {config.llm_tokenizer!r}: {err}") from None
        return OpenAILLM(config.llm_openai_base_url, config.llm_model, api_key_env=config.llm_api_key_env,
                         response_format=config.llm_response_format, tokenizer=tokenizer)
    return None


def _tokenizer_folder(spec: str):
    """llm_tokenizer is a model spec ('smollm2-135m') or a local folder: the folder to load."""
    from ..models import ModelNotFoundError, resolve_model

    try:
        return resolve_model(spec).path
    except ModelNotFoundError as err:
        raise ConfigError(f"llm_tokenizer: {err}") from None
