"""Pick the escalation client from configuration."""

from __future__ import annotations

from ..cascade_config import CascadeConfig, ConfigError, TierConfig
from .base import EscalationClient


def make_client(config: CascadeConfig) -> EscalationClient | None:
    """The engine at llm_address (SglangScheduler protocol), or an OpenAI-compatible endpoint; None when neither is set."""
    return make_tier_client(config.tier_list()[-1], config)


def make_tier_client(tier: TierConfig, config: CascadeConfig, *, secured: bool = True) -> EscalationClient | None:
    """The client of a tier with an address or an OpenAI endpoint; None for neither. secured: apply the
    llm_tls_* / llm_token_* settings to a gRPC address (the last tier's)."""
    if tier.address:
        from .grpc_llm import GrpcLLM
        from .grpc_security import llm_channel_security

        folder = tokenizer_folder(tier.tokenizer, f"{tier.label} tokenizer")
        return GrpcLLM(tier.address, tokenizer=folder, **(llm_channel_security(config) if secured else {}))
    if tier.openai_base_url:
        from .openai_llm import OpenAILLM

        tokenizer = None
        if tier.tokenizer:
            from transformers import AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder(tier.tokenizer, f"{tier.label} tokenizer"))
            except (OSError, ValueError) as err:
                raise ConfigError(f"{tier.label} tokenizer {tier.tokenizer!r}: {err}") from None
        return OpenAILLM(tier.openai_base_url, tier.model, api_key_env=config.llm_api_key_env,
                         response_format=config.llm_response_format, tokenizer=tokenizer)
    return None


def tokenizer_folder(spec: str | None, setting: str) -> str | None:
    """A tokenizer setting (a model spec such as 'smollm2-135m', or a local folder) as the folder to
    load; None for unset. ConfigError naming `setting` when there is no such model."""
    from ..models import ModelNotFoundError, resolve_model

    if not spec:
        return None
    try:
        return str(resolve_model(spec).path)
    except ModelNotFoundError as err:
        raise ConfigError(f"{setting}: {err}") from None
