"""What crosses the SGLang boundary: the sampling parameters we send and the confidence we read back.

Pure functions with no SGLang import, so they are shared by the executor (which needs a GPU to
run) and by the CPU tests (which check them against SGLang's own classes and recorded outputs).

Confidence from log-probabilities. A request asks for ``token_ids_logprob=<scale token ids>``;
SGLang then returns, for every output position, the log-probability of each scale token under the
grammar-masked distribution the token was sampled from. `confidence_stats` (the one kernels entry
point the torch executor also uses) wants a logits row, so we build a compact row of K + 1
entries: the K log-probabilities, then log(1 - sum p_k) standing for the rest of the vocabulary
(-inf when the scale holds all the mass). Its log-normaliser is log(1) = 0, so the kernel's
probs are exactly the K probabilities SGLang reported and mass, expected value and entropy come
out as if the kernel had read the full [V] row. The torch executor reads the raw logits with the
grammar bitmask applied inside the kernel: the same masked distribution.
"""

from __future__ import annotations

import re

from ..contract import Format
from .executor import Request

# Key of the per-token records written by the device-side logit processor (sglang_plugin.py).
DEVICE_CONFIDENCE_KEY = "corea_confidence"
# custom_params keys read by that processor (JSON-safe values only: they cross SGLang's IPC).
PARAM_SCALE_IDS = "corea_scale_ids"
PARAM_SCALE_VALUES = "corea_scale_values"


def confidence_stop_regex(fmt: Format) -> str:
    """A stop_regex that ends generation on the step the confidence symbol is written.

    Only free-text fields come before the confidence in an answer-first format, and the grammar
    keeps the opening of the confidence field out of them (no quote in JSON strings, no '<' in
    tag bodies), so the pattern matches only at the confidence position.
    """
    symbols = "|".join(re.escape(s) for s in fmt.scale.symbols)
    return f"{re.escape(fmt.confidence_prefix)}(?:{symbols})"


def build_sampling_params(request: Request, *, device_confidence_ids: list[int] | None = None) -> dict:
    """SGLang sampling params (a dict for Engine.async_generate) for one of our requests."""
    sp = request.sampling
    params: dict = {
        "max_new_tokens": request.max_new_tokens,
        # SGLang treats temperature 0 as greedy (top_k = 1) itself.
        "temperature": sp.temperature,
        "top_p": sp.top_p,
        # Keep the matched stop text: the confidence digit is part of the answer.
        "no_stop_trim": True,
        "skip_special_tokens": True,
    }
    if sp.seed is not None:
        params["sampling_seed"] = sp.seed
    if sp.top_k != -1:
        params["top_k"] = sp.top_k
    if sp.stop:
        params["stop"] = list(sp.stop)
    if sp.stop_token_ids:
        params["stop_token_ids"] = list(sp.stop_token_ids)
    grammar = request.grammar
    if grammar is not None:  # our kinds are SGLang's names
        params[grammar.kind] = grammar.source
    fmt = request.format
    if fmt is not None:
        if request.ends_on_confidence:
            params["stop_regex"] = confidence_stop_regex(fmt)
        if device_confidence_ids is not None:
            params["custom_params"] = {
                PARAM_SCALE_IDS: list(device_confidence_ids),
                PARAM_SCALE_VALUES: list(fmt.scale.values),
            }
    return params


def finish_reason_of(meta_info: dict) -> tuple[str | None, str | None]:
    """(our finish reason, error message) from SGLang's meta_info['finish_reason'].

    None while the request runs. SGLang reports stop tokens, stop strings and stop regexes all
    as type 'stop'; an abort that carries an HTTP status (bad request, server error) is an error.
    """
    reason = meta_info.get("finish_reason")
    if reason is None:
        return None, None
    kind = reason.get("type")
    if kind == "stop":
        return "stop", None
    if kind == "length":
        return "length", None
    if kind == "abort":
        status = reason.get("status_code")
        if status is not None and int(status) >= 400:
            return "error", str(reason.get("message", "aborted by SGLang"))
        return "abort", None
    return "error", f"unknown SGLang finish reason {reason!r}"
