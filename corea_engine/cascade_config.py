"""Server defaults for the cascade: a dataclass loadable from TOML/JSON and COREA_* variables.

Tiers: two by default, "slm" and "llm", from the slm_*/llm_* settings below. N tiers are an ordered
list (`tiers`: `[[cascade.tiers]]` tables in a file, `--tier name=...,address=...` flags, a JSON
list in COREA_TIERS), cheapest first; each is a TierConfig. `tier_list()` gives the tiers either way.

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
import re
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


@dataclass(frozen=True)
class TierConfig:
    """One tier. threshold: accept its answer when its confidence >= this (not read for the last
    tier); prices per 1k tokens. Where it runs (at most one): address (an engine speaking the
    SglangScheduler protocol), openai_base_url (+ model: the endpoint's model name), model alone
    (in this process; the first tier without any: the server's --model)."""

    name: str
    threshold: float = 0.5
    prompt_price: float = 0.0
    completion_price: float = 0.0
    temperature: float = 0.0
    calibrator: str | None = None
    address: str | None = None
    openai_base_url: str | None = None
    model: str | None = None
    tokenizer: str | None = None

    @property
    def label(self) -> str:
        """The name in messages ("SLM", "LLM" for the two default tiers)."""
        return self.name.upper() if self.name in ("slm", "llm") else self.name

    @property
    def verbalized(self) -> bool:
        """Reached through an escalation client: its confidence is only the one written in its text."""
        return bool(self.openai_base_url)

    @classmethod
    def parse(cls, spec: str) -> "TierConfig":
        """A `--tier` value: comma-separated key=value, keys as the fields (dashes allowed), e.g.
        name=mid,address=127.0.0.1:50062,threshold=0.6,prompt-price=0.0002,completion-price=0.0006."""
        values = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, value = part.partition("=")
            if not sep:
                raise ConfigError(f"tier {spec!r}: {part!r} is not key=value")
            values[key.strip().replace("-", "_")] = value.strip()
        return tier_from_dict(values, where=f"tier {spec!r}")

    def validate(self, index: int, count: int, shorthand: bool = False) -> None:
        """ConfigError naming the setting; `shorthand`: this tier was made from the two-tier settings
        (threshold, slm_*/llm_*), so errors name those."""
        where = f"tier {index} ({self.name!r})"

        def setting(key: str) -> str:
            if not shorthand:
                return f"{where} {key}"
            return key if key == "threshold" else f"{self.name}_{key}"

        if not TIER_NAME.fullmatch(self.name or "") or self.name == "total":
            raise ConfigError(f"{where}: name must be letters, digits, '-' or '_' (up to 32), not 'total' "
                              "(the end-to-end series of the metrics)")
        for key, (low, high) in TIER_RANGES.items():
            _check_number(setting(key), getattr(self, key), low, high, False, False)
        try:  # the executors' own rule (0, or not too close to 0); slm/llm_temperature reach it as tiers
            SamplingParams(temperature=self.temperature).validate()
        except InvalidRequestError as err:
            raise ConfigError(f"{setting('temperature')}: {err}") from None
        check_tokenizer(setting("tokenizer"), self.tokenizer)
        if self.address and ":" not in self.address:  # else the first call waits out its connect timeout
            raise ConfigError(f"{where}: address must be HOST:PORT, got {self.address!r}")
        if bool(self.address) + bool(self.openai_base_url) > 1:
            raise ConfigError(f"{where}: give address or openai_base_url, not both")
        if self.openai_base_url and not self.model:
            raise ConfigError(f"{where}: openai_base_url needs model (the endpoint's model name)")
        if index == 0 and self.openai_base_url:
            raise ConfigError(f"{where}: the first tier runs on an executor (in process or address), "
                              "which reads its confidence; an OpenAI endpoint can be a later tier")
        if self.calibrator and index == count - 1:
            raise ConfigError(f"{where}: the last tier takes no calibrator (it makes no decision)")


def check_tokenizer(setting: str, spec: str | None) -> None:
    """A tokenizer setting names the embedded model or a folder (None: unset); ConfigError naming the setting."""
    if spec and spec != DEFAULT_MODEL and not Path(spec).expanduser().is_dir():
        raise ConfigError(f"{setting} {spec!r} is not '{DEFAULT_MODEL}' or a folder")


TIER_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
TIER_RANGES = {"threshold": (0.0, 1.0), "prompt_price": (0.0, 1e6), "completion_price": (0.0, 1e6),
               "temperature": (0.0, MAX_TEMPERATURE)}


def tier_from_dict(values: dict, where: str = "tier") -> TierConfig:
    known = {f.name: f.type for f in fields(TierConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    if not values.get("name"):
        raise ConfigError(f"{where}: needs a name")
    out = {}
    for key, value in values.items():
        if key in TIER_RANGES:
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: {key} must be a number, got {value!r}") from None
        elif value is not None:
            value = str(value)
        out[key] = value
    return TierConfig(**out)


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
    # N tiers, cheapest first (None: the two tiers above). The settings above that name one tier
    # (ONE_TIER_SETTINGS: threshold, calibrator, slm_*/llm_* prices, temperatures and endpoints)
    # are then refused.
    tiers: tuple[TierConfig, ...] | None = None

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
        if (self.llm_tls_cert_file is None) != (self.llm_tls_key_file is None):
            raise ConfigError("llm_tls_cert_file and llm_tls_key_file go together (a client certificate for mTLS)")
        if self.llm_address and self.llm_openai_base_url:
            raise ConfigError("give llm_address or llm_openai_base_url, not both")
        if self.tiers is not None:
            self._validate_tiers()
        tiers = self.tier_list()  # the two-tier shorthand is checked as tiers too
        for i, tier in enumerate(tiers):
            tier.validate(i, len(tiers), shorthand=self.tiers is None)
        return self

    def _validate_tiers(self) -> None:
        tiers = self.tiers
        if not isinstance(tiers, tuple) or not all(isinstance(t, TierConfig) for t in tiers):
            raise ConfigError("tiers must be a list of tier tables")
        if len(tiers) < 2:
            raise ConfigError(f"tiers: give at least two (cheapest first), got {len(tiers)}")
        names = [t.name for t in tiers]
        if len(set(names)) != len(names):
            raise ConfigError(f"tiers: names must differ, got {', '.join(names)}")
        for i, tier in enumerate(tiers):
            if 0 < i < len(tiers) - 1 and tier.verbalized and self.confidence_source == "expected":
                raise ConfigError(f"tier {i} ({tier.name!r}) is an OpenAI endpoint: its confidence is the one "
                                  "written in its text (sampled); set confidence_source = sampled")
        for name in ONE_TIER_SETTINGS:  # not read with tiers: refused rather than silently ignored
            if getattr(self, name) != _DEFAULTS[name]:
                key = name.removeprefix("slm_").removeprefix("llm_")
                raise ConfigError(f"with tiers, give each tier its {key} (tiers[i].{key}), not {name}")

    def tier_list(self) -> list[TierConfig]:
        """The tiers, cheapest first: `tiers`, or the two-tier shorthand (slm, llm)."""
        if self.tiers is not None:
            return list(self.tiers)
        return [
            TierConfig("slm", self.threshold, self.slm_prompt_price, self.slm_completion_price, self.slm_temperature,
                       self.calibrator),
            TierConfig("llm", self.threshold, self.llm_prompt_price, self.llm_completion_price, self.llm_temperature,
                       None, self.llm_address, self.llm_openai_base_url, self.llm_model, self.llm_tokenizer),
        ]

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
        if "tiers" in values:
            values["tiers"] = _tiers(values.pop("tiers"))
        return cls(**{name: value if name == "tiers" else _coerce(name, value) for name, value in values.items()}).validate()


def _tiers(value) -> tuple[TierConfig, ...] | None:
    """A list of tier tables (a file) or its JSON text (COREA_TIERS)."""
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except ValueError as err:
            raise ConfigError(f"tiers: not a JSON list of tier objects ({err})") from None
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError("tiers must be a list of tier tables ([[cascade.tiers]] in TOML)")
    return tuple(tier_from_dict(v, where=f"tiers[{i}]") for i, v in enumerate(value))


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
_DEFAULTS = {f.name: f.default for f in fields(CascadeConfig)}
# What tier_list() makes the two default tiers of; each tier of `tiers` has its own.
ONE_TIER_SETTINGS = ("threshold", "calibrator", "slm_prompt_price", "slm_completion_price", "llm_prompt_price",
                     "llm_completion_price", "slm_temperature", "llm_temperature", "llm_address",
                     "llm_openai_base_url", "llm_model", "llm_tokenizer")
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
    # The bounds of a number; the temperature's own rule is SamplingParams.validate's (TierConfig.validate).
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
