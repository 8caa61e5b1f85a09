"""Server defaults for the cascade: a dataclass loadable from TOML/JSON and COREA_* variables.

Precedence: built-in defaults < file < environment (COREA_THRESHOLD=0.7, COREA_MODE=slm_only,
...; every field name upper-cased with the COREA_ prefix) < per-request values.
Prices are per 1,000 tokens in one configured unit (dollars by default); the defaults are
placeholders of the right order (a small self-hosted model vs a hosted frontier model).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

from .contract import UnknownFormatError, get_format
from .models import DEFAULT_MODEL
from .runtime.executor import MAX_NEW_TOKENS_LIMIT, MAX_TEMPERATURE, InvalidRequestError, SamplingParams

MODES = ("cascade", "slm_only", "llm_only")
CONFIDENCE_SOURCES = ("expected", "sampled")
ENV_PREFIX = "COREA_"


class ConfigError(ValueError):
    """A configuration value or key that is not valid; the message names it."""


@dataclass
class CascadeConfig:
    # Policy
    threshold: float = 0.5
    confidence_source: str = "expected"
    # What `corea calibrate` outputs: a calibrator file (applied before the threshold) and the
    # tie rule (defer a confidence equal to the threshold with this probability; seeded per request).
    calibrator: str | None = None
    tie_defer_prob: float = 0.0
    tie_seed: int = 0
    mode: str = "cascade"
    contract: str = "json"
    max_reasoning_chars: int | None = None  # None: the contract's own bounds
    max_answer_chars: int | None = None
    max_new_tokens: int | None = None  # per tier; None: the contract's worst case
    max_question_chars: int = 8000
    slm_temperature: float = 0.0
    llm_temperature: float = 0.0
    # Cost, per 1k tokens
    slm_prompt_price: float = 0.00002
    slm_completion_price: float = 0.00004
    llm_prompt_price: float = 0.0025
    llm_completion_price: float = 0.01
    # Escalation: where the LLM is (address: an engine speaking sglang.grpc.scheduler.SglangScheduler;
    # base_url: OpenAI-compatible). llm_tokenizer (a model spec or folder): the tier's tokenizer, instead
    # of the engine's GetTokenizer, or to count tokens when an OpenAI endpoint reports no usage.
    llm_address: str | None = None
    llm_openai_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key_env: str = "OPENAI_API_KEY"
    # OpenAI-compatible endpoints: send JSON contracts as response_format json_schema.
    llm_response_format: bool = True
    llm_tokenizer: str | None = None
    # Securing the gRPC LLM call (escalation/grpc_security.py): TLS when a CA file or a client
    # certificate is set; a bearer token from a file, else from the variable llm_token_env.
    llm_tls_ca_file: str | None = None
    llm_tls_cert_file: str | None = None
    llm_tls_key_file: str | None = None
    llm_tls_server_name: str | None = None
    llm_token_file: str | None = None
    llm_token_env: str = "COREA_LLM_TOKEN"
    # Faults
    llm_timeout_s: float = 30.0
    llm_retries: int = 2
    retry_backoff_s: float = 0.1  # doubled per retry, capped at retry_backoff_max_s
    retry_backoff_max_s: float = 2.0
    breaker_failures: int = 5
    breaker_cooldown_s: float = 10.0

    def validate(self) -> "CascadeConfig":
        for name, (low, high, optional) in NUMERIC_RANGES.items():
            _check_number(name, getattr(self, name), low, high, optional, _TYPES[name].startswith("int"))
        if self.confidence_source not in CONFIDENCE_SOURCES:
            raise ConfigError(f"confidence_source must be one of {CONFIDENCE_SOURCES}, got {self.confidence_source!r}")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        try:
            get_format(self.contract)
        except UnknownFormatError as err:
            raise ConfigError(str(err)) from None
        for name in ("slm_temperature", "llm_temperature"):  # also the executors' own safe ranges
            try:
                SamplingParams(temperature=getattr(self, name)).validate()
            except InvalidRequestError as err:
                raise ConfigError(f"{name}: {err}") from None
        if (self.llm_tls_cert_file is None) != (self.llm_tls_key_file is None):
            raise ConfigError("llm_tls_cert_file and llm_tls_key_file go together (a client certificate for mTLS)")
        if self.llm_address and self.llm_openai_base_url:
            raise ConfigError("give llm_address or llm_openai_base_url, not both")
        if self.llm_tokenizer and self.llm_tokenizer != DEFAULT_MODEL and not Path(self.llm_tokenizer).is_dir():
            raise ConfigError(f"llm_tokenizer {self.llm_tokenizer!r} is not '{DEFAULT_MODEL}' or a folder")
        return self

    def tier_costs(self, slm_prompt: int, slm_completion: int, llm_prompt: int, llm_completion: int) -> tuple[float, float]:
        """(SLM cost, LLM cost) of these token counts at the configured per-1k prices."""
        slm = (slm_prompt * self.slm_prompt_price + slm_completion * self.slm_completion_price) / 1000
        llm = (llm_prompt * self.llm_prompt_price + llm_completion * self.llm_completion_price) / 1000
        return slm, llm

    def replace(self, **changes) -> "CascadeConfig":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None}).validate()

    @classmethod
    def load(cls, path: str | Path | None = None, env: dict | None = None) -> "CascadeConfig":
        """Defaults, then the file (TOML or JSON), then COREA_* environment variables."""
        values: dict = {}
        if path is not None:
            values.update(_read_file(Path(path)))
        env = os.environ if env is None else env
        known = {f.name for f in fields(cls)}
        for name in known:
            key = ENV_PREFIX + name.upper()
            if key in env:
                values[name] = env[key]
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown cascade setting(s): {', '.join(unknown)}")
        return cls(**{name: _coerce(name, value) for name, value in values.items()}).validate()


def _read_file(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import tomllib

            data = tomllib.loads(text)
    except ValueError as err:
        raise ConfigError(f"cannot parse {path}: {err}") from None
    data = data.get("cascade", data)  # a [cascade] table or top-level keys
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a table of settings")
    return data


_TYPES = {f.name: f.type for f in fields(CascadeConfig)}
_OPEN = 1e-9  # a lower bound just above zero: "must be > 0"

# Every numeric setting: (lowest, highest, None allowed). A setting outside its range would start
# a server that cannot serve (a NaN timeout degrades every deferral, 0 tokens refuse every request).
NUMERIC_RANGES: dict[str, tuple[float, float, bool]] = {
    "threshold": (0.0, 1.0, False),
    "tie_defer_prob": (0.0, 1.0, False),
    "tie_seed": (0, 2**63 - 1, False),
    "max_reasoning_chars": (1, 100_000, True),
    "max_answer_chars": (1, 10_000, True),
    "max_new_tokens": (1, MAX_NEW_TOKENS_LIMIT, True),
    "max_question_chars": (1, 1_000_000, False),
    # The bounds of a number; the temperature's own range is SamplingParams.validate's (validate() below).
    "slm_temperature": (0.0, MAX_TEMPERATURE, False),
    "llm_temperature": (0.0, MAX_TEMPERATURE, False),
    "slm_prompt_price": (0.0, 1e6, False),
    "slm_completion_price": (0.0, 1e6, False),
    "llm_prompt_price": (0.0, 1e6, False),
    "llm_completion_price": (0.0, 1e6, False),
    "llm_timeout_s": (_OPEN, 86_400.0, False),
    "llm_retries": (0, 100, False),
    "retry_backoff_s": (0.0, 3600.0, False),
    "retry_backoff_max_s": (0.0, 3600.0, False),
    "breaker_failures": (1, 1_000_000, False),
    "breaker_cooldown_s": (0.0, 86_400.0, False),
}


def _check_number(name: str, value, low: float, high: float, optional: bool, integer: bool) -> None:
    if value is None and optional:
        return
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value) or not low <= value <= high:
        bound = f"> 0 and <= {high:.10g}" if low == _OPEN else f"in [{low:.10g}, {high:.10g}]"
        raise ConfigError(f"cascade setting {name} must be {kind} {bound}{' or unset' if optional else ''}, got {value!r}")


def _coerce(name: str, value):
    """Environment strings (and file values) to the field's type."""
    kind = _TYPES[name]
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none") and "None" in kind):
        return None
    if kind == "bool":
        if isinstance(value, bool):
            return value
        words = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
        if str(value).strip().lower() in words:
            return words[str(value).strip().lower()]
        raise ConfigError(f"cascade setting {name} must be true or false, got {value!r}")
    try:
        if kind.startswith("float"):
            return float(value)
        if kind.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"cascade setting {name} must be {kind.split(' ')[0]}, got {value!r}") from None
