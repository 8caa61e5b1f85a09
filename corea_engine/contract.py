"""The answer-plus-confidence contract: formats, grammars, parsing and the confidence scale.

Runtime, training and evaluation all speak through this module, so a format is defined once:

* `ConfidenceScale` says which tokens may stand at the confidence position and what each is
  worth. Constrained output writes the confidence as ``0.D``; the single digit token D is the
  decision, which is what lets the confidence kernel read one distribution at one position.
* `Format` is a syntax (JSON object or literature tags) and a field order (answer-first, or
  confidence-first for early deferral). It renders the prompt instructions, an xgrammar EBNF
  grammar with every free-text field bounded, and parses text back into `Parsed`.
* `GrammarCache` compiles a format's grammar once per tokenizer (an LRU: bounds are client input).

The parser is lenient about what models write when unconstrained (``90%``, ``100.``,
``I am 0.9 confident``), strict about structure, and names what is wrong when it refuses.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import weakref
from dataclasses import dataclass
from functools import cached_property

FIELDS = ("reasoning", "answer", "confidence")
MAX_TOKENS_PER_CHAR = 4  # UTF-8 bytes in a character, at most; a byte-level token holds >= 1 byte


class ContractError(ValueError):
    """Text that does not satisfy a format; the message says what is missing or wrong."""


class UnknownFormatError(ValueError):
    """A format name that is not one of FORMATS."""


@dataclass(frozen=True)
class Parsed:
    reasoning: str
    answer: str
    confidence: float


# ---------------------------------------------------------------------------------------------
# The confidence scale


@dataclass(frozen=True)
class ConfidenceScale:
    """The symbols allowed at the confidence position and the value each stands for.

    Constrained decoding writes ``prefix + symbol``; ``0.7`` means 0.7. Each symbol must be a
    single token of the model's tokenizer (true of digits for SmolLM2, Llama-3 and Qwen2.5).
    """

    prefix: str = "0."
    symbols: tuple[str, ...] = tuple("0123456789")
    values: tuple[float, ...] = tuple(d / 10 for d in range(10))

    def value_of(self, symbol: str) -> float:
        return self.values[self.symbols.index(symbol)]

    def token_ids(self, tokenizer) -> list[int]:
        """Token id of every symbol, in scale order; refuses symbols that are not one token."""
        ids = []
        for symbol in self.symbols:
            encoded = tokenizer.encode(symbol, add_special_tokens=False)
            if len(encoded) != 1:
                raise ContractError(
                    f"confidence symbol {symbol!r} is {len(encoded)} tokens for this tokenizer; "
                    "the scale needs single-token symbols"
                )
            ids.append(encoded[0])
        return ids

    def ebnf(self) -> str:
        alts = " | ".join(json.dumps(s) for s in self.symbols)
        return f"{json.dumps(self.prefix)} ({alts})"


SCALE = ConfidenceScale()

_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)"
_NUMBER = re.compile(rf"[-+]?{_NUM}\s*(%?)")
# "on a scale of 0-10", "(1-5 scale)", "scale from 0 to 10": the form states its own scale.
_SCALE = re.compile(
    rf"(?:\bscale\s+(?:of\s+|from\s+)?\(?({_NUM})\s*(?:-|–|to)\s*({_NUM})\)?"
    rf"|\(?({_NUM})\s*(?:-|–|to)\s*({_NUM})\)?\s*(?:-\s*point\s+)?scale\b"
    rf"|\(\s*({_NUM})\s*(?:-|–|to)\s*({_NUM})\s*\))",
    re.IGNORECASE,
)
_FRACTION = re.compile(rf"({_NUM})\s*(?:/|\bout\s+of\b)\s*({_NUM})", re.IGNORECASE)
_RANGE = re.compile(rf"{_NUM}\s*%?\s*(?:-|–|\bto\b|\bor\b|/)\s*{_NUM}\s*%?\s*(?:/|\bout\s+of\b)\s*{_NUM}"
                    rf"|{_NUM}\s*%?\s*(?:-|–|\bto\b|\bor\b)\s*{_NUM}|\bbetween\s+{_NUM}", re.IGNORECASE)


def parse_confidence(text: str) -> float:
    """A verbalized confidence to [0, 1]; refuses (ContractError naming the form) what it cannot read surely.

    Forms read: a number in [0, 1] ('0.85', 'I am 0.9 confident'); a percentage ('85%', and a bare
    number above 1: '100.', '90'); a fraction ('9/10', '3 out of 5'); a value on a scale the text
    states ('8 on a scale of 0-10', '4 (1-5)'), worth value / top of the scale. Refused: ranges and
    alternatives ('0.7-0.8', '7 or 8 out of 10'), fractions or scale values out of range.
    """
    body = text.strip()
    scale = _SCALE.search(body)
    if scale is not None:
        low, high = (float(g) for g in scale.groups() if g is not None)
        rest = body[: scale.start()] + " " + body[scale.end():]
        match = _NUMBER.search(rest)
        if match is None:
            raise ContractError(f"no value besides the scale in confidence {body[:40]!r}")
        value = float(match.group(0).rstrip("% \t\n"))
        if not (0 <= low < high and low <= value <= high) or match.group(1):
            raise ContractError(f"confidence {match.group(0).strip()!r} does not fit its scale {low:g}-{high:g} in {body[:40]!r}")
        return value / high
    if (rng := _RANGE.search(body)) is not None:
        raise ContractError(f"confidence {rng.group(0)!r} is a range or alternatives, not one value")
    fraction = _FRACTION.search(body)
    if fraction is not None:
        part, whole = float(fraction.group(1)), float(fraction.group(2))
        if not 0 <= part <= whole or whole == 0:
            raise ContractError(f"confidence fraction {fraction.group(0)!r} is outside [0, 1]")
        return part / whole
    match = _NUMBER.search(body)
    if match is None:
        raise ContractError(f"no number in confidence {body[:40]!r}")
    value = float(match.group(0).rstrip("% \t\n"))
    if match.group(1) or value > 1.0:
        value /= 100.0
    if not 0.0 <= value <= 1.0:
        raise ContractError(f"confidence {match.group(0).strip()!r} is outside [0, 1] (or 0-100%)")
    return value


# ---------------------------------------------------------------------------------------------
# Formats


@dataclass(frozen=True)
class Format:
    """One output format. Hashable, so compiled grammars can be cached by it."""

    name: str
    syntax: str  # "json" | "tags"
    order: tuple[str, ...]  # FIELDS in output order
    max_reasoning_chars: int = 300
    max_answer_chars: int = 40
    scale: ConfidenceScale = SCALE

    @property
    def confidence_first(self) -> bool:
        return self.order[0] == "confidence"

    def bounded(self, *, max_reasoning_chars: int | None = None, max_answer_chars: int | None = None):
        """The same format with other bounds on its free-text fields."""
        from dataclasses import replace

        return replace(
            self,
            max_reasoning_chars=max_reasoning_chars or self.max_reasoning_chars,
            max_answer_chars=max_answer_chars or self.max_answer_chars,
        )

    # -- the pieces of text around each field ---------------------------------------------
    def _opening(self, field: str, index: int) -> str:
        if self.syntax == "json":
            return ("{" if index == 0 else ", ") + f'"{field}": ' + ("" if field == "confidence" else '"')
        tag = "think" if field == "reasoning" else field
        return ("" if index == 0 else "\n") + f"<{tag}>"

    def _closing(self, field: str, index: int) -> str:
        last = index == len(self.order) - 1
        if self.syntax == "json":
            return ("" if field == "confidence" else '"') + ("}" if last else "")
        tag = "think" if field == "reasoning" else field
        return f"</{tag}>"

    @cached_property
    def confidence_prefix(self) -> str:
        """Text that ends right before the confidence symbol in constrained output."""
        i = self.order.index("confidence")
        return self._opening("confidence", i) + self.scale.prefix

    @cached_property
    def confidence_suffix(self) -> str:
        """What the grammar forces after the symbol when confidence is the last field.

        An answer-first request stops on the symbol's step and this text is appended without
        decoding it: nothing is left to choose.
        """
        i = self.order.index("confidence")
        return self._closing("confidence", i)

    @property
    def max_tokens(self) -> int:
        """Worst-case completion length in tokens, for any script and any byte-level tokenizer.

        The free-text fields are bounded in characters (the grammar counts characters). A
        character is at most 4 UTF-8 bytes and a byte-level BPE token (or a byte-fallback
        SentencePiece token) holds at least one byte, so a field of N characters is at most
        4N tokens: emoji and rare CJK cost 2-4 tokens each. The scaffold is ASCII (one token
        per character at most); +1 for the end-of-sequence token.
        """
        free_text = self.max_reasoning_chars + self.max_answer_chars
        return len(self.render("", "", 0.5)) + MAX_TOKENS_PER_CHAR * free_text + 1

    def render(self, reasoning: str, answer: str, confidence: float) -> str:
        """Well-formed text for given fields (training targets, tests, documentation)."""
        values = {"reasoning": reasoning, "answer": answer, "confidence": f"{confidence:.1f}"}
        parts = []
        for i, field in enumerate(self.order):
            value = values[field]
            if self.syntax == "json" and field != "confidence":
                value = json.dumps(value, ensure_ascii=False)[1:-1]  # raw UTF-8, as the grammar writes it
            parts.append(self._opening(field, i) + value + self._closing(field, i))
        return "".join(parts)

    def instructions(self) -> str:
        """The system prompt that asks a model for this format."""
        example = self.render("Tom starts with 3 apples and buys 2 more, so 3 + 2 = 5.", "5", 0.8)
        return (
            "Solve the problem. Reason briefly, then give the final answer alone and how confident "
            "you are that it is correct, from 0.0 (surely wrong) to 0.9 (surely right). "
            "Reply in exactly this form.\n"
            "Example problem: Tom has 3 apples and buys 2 more. How many apples does he have?\n"
            "Example reply: " + example
        )

    # -- grammar ------------------------------------------------------------------------
    def ebnf(self) -> str:
        """An xgrammar EBNF grammar that admits exactly this format with its bounds."""
        r, a = self.max_reasoning_chars, self.max_answer_chars
        # Bounded repetition of a character class only: xgrammar handles `[...]{0,N}` in
        # microseconds per token but a repeated rule with alternatives in ~1 s. So JSON strings
        # here have no escapes (quote, backslash and control characters are not produced).
        text_class = '[^"\\\\\\x00-\\x1f]' if self.syntax == "json" else "[^<]"
        answer_class = '[^"\\\\\\x00-\\x1f]' if self.syntax == "json" else "[^<\\n]"
        # An answer cannot open with what closes it ('"answer": "}' ends nothing; a tag answer
        # already cannot start with '<'): a model that wants to stop must write an answer first.
        answer_first = '[^"}\\\\\\x00-\\x1f]' if self.syntax == "json" else answer_class
        bodies = {"reasoning": f"{text_class}{{0,{r}}}", "answer": f"{answer_first}{answer_class}{{0,{a - 1}}}"}
        bodies["confidence"] = self.scale.ebnf()
        seq = []
        for i, field in enumerate(self.order):
            seq += [json.dumps(self._opening(field, i)), bodies[field], json.dumps(self._closing(field, i))]
        return "root ::= " + " ".join(s for s in seq if s != '""')

    def json_schema(self) -> dict | None:
        """The format as a JSON Schema for endpoints that take structured output
        (OpenAI `response_format` json_schema; vLLM, SGLang and llama.cpp accept it); None for
        tag formats, which JSON Schema cannot describe. Properties in the format's field order;
        the bounds are the grammar's, so the worst case stays within max_tokens."""
        if self.syntax != "json":
            return None
        properties = {
            "reasoning": {"type": "string", "maxLength": self.max_reasoning_chars},
            "answer": {"type": "string", "minLength": 1, "maxLength": self.max_answer_chars},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        }
        return {
            "type": "object",
            "properties": {field: properties[field] for field in self.order},
            "required": list(self.order),
            "additionalProperties": False,
        }

    # -- parsing ------------------------------------------------------------------------
    def parse(self, text: str) -> Parsed:
        return _parse_json(text) if self.syntax == "json" else parse_tags(text)


def _parse_json(text: str) -> Parsed:
    start = text.find("{")
    if start < 0:
        raise ContractError("no JSON object: expected '{' with reasoning, answer and confidence")
    try:
        obj, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as err:
        raise ContractError(f"malformed JSON at character {start + err.pos}: {err.msg}") from None
    if not isinstance(obj, dict):
        raise ContractError("the JSON value is not an object")
    missing = [f for f in FIELDS if f not in obj]
    if missing:
        raise ContractError(f"JSON object lacks {', '.join(missing)}")
    for field in ("reasoning", "answer"):
        if not isinstance(obj[field], str):
            raise ContractError(f"'{field}' must be a string, got {type(obj[field]).__name__}")
    conf = obj["confidence"]
    if isinstance(conf, bool) or not isinstance(conf, (int, float, str)):
        raise ContractError(f"'confidence' must be a number, got {type(conf).__name__}")
    return Parsed(obj["reasoning"].strip(), obj["answer"].strip(), parse_confidence(str(conf)))


def _tag_body(text: str, tag: str, *, required: bool = True) -> str | None:
    """Body of the first <tag>, up to its closing tag."""
    open_match = re.search(rf"<\s*{tag}\s*>", text, re.IGNORECASE)
    if open_match is None:
        if required:
            raise ContractError(f"missing <{tag}> tag")
        return None
    rest = text[open_match.end():]
    close = re.search(rf"<\s*/\s*{tag}\s*>", rest, re.IGNORECASE)
    if close is None:
        if required:
            raise ContractError(f"<{tag}> at character {open_match.start()} is never closed")
        # An unclosed optional part (reasoning) runs to the next required tag.
        close = re.search(r"<\s*(answer|confidence)\s*>", rest, re.IGNORECASE)
        return rest if close is None else rest[: close.start()]
    return rest[: close.start()]


def parse_tags(text: str) -> Parsed:
    """Parse the literature tag format, in either field order.

    ``<think>`` is optional (some models skip it); answer and confidence are required. With
    repeated tags the first counts, as the recorded evaluations did.
    """
    answer = _tag_body(text, "answer")
    confidence_body = _tag_body(text, "confidence")
    reasoning = _tag_body(text, "think", required=False) or ""
    if not answer.strip():
        raise ContractError("<answer> is empty")
    return Parsed(reasoning.strip(), answer.strip(), parse_confidence(confidence_body))


def _make_formats() -> dict[str, Format]:
    answer_first = ("reasoning", "answer", "confidence")
    confidence_first = ("confidence", "reasoning", "answer")
    formats = [
        Format("json", "json", answer_first),
        Format("tags", "tags", answer_first),
        Format("json_confidence_first", "json", confidence_first),
        Format("tags_confidence_first", "tags", confidence_first),
    ]
    return {f.name: f for f in formats}


FORMATS: dict[str, Format] = _make_formats()
DEFAULT_FORMAT = "json"


def get_format(name: str | Format) -> Format:
    if isinstance(name, Format):
        return name
    try:
        return FORMATS[name]
    except KeyError:
        raise UnknownFormatError(
            f"unknown contract {name!r}; choose one of: {', '.join(FORMATS)}"
        ) from None


def build_messages(question: str, fmt: Format | str | None = None) -> list[dict]:
    """Chat messages that ask `question` under `fmt` (or plainly, when fmt is None)."""
    messages = []
    if fmt is not None:
        messages.append({"role": "system", "content": get_format(fmt).instructions()})
    messages.append({"role": "user", "content": question})
    return messages


# ---------------------------------------------------------------------------------------------
# Compiled grammars, one compiler per tokenizer


GRAMMAR_CACHE_SIZE = 64  # compiled grammars kept per tokenizer (~0.4 MB each for SmolLM2)


class GrammarCache:
    """Compiles each format's grammar once per tokenizer, keeping the `max_entries` most recent.

    Formats carry client-chosen bounds (max_answer_chars, ...) and the worker compiles grammars
    that clients send, so the cache is an LRU over both: many distinct values cost compiles, never
    unbounded memory. len() is its size (a metric).
    """

    _per_tokenizer: "weakref.WeakKeyDictionary[object, GrammarCache]" = weakref.WeakKeyDictionary()
    _lock = threading.Lock()

    def __init__(self, tokenizer, vocab_size: int, max_entries: int = GRAMMAR_CACHE_SIZE):
        import xgrammar as xgr

        self.tokenizer_info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        # This LRU is the one cache: xgrammar's own keeps every grammar ever compiled.
        self._compiler = xgr.GrammarCompiler(self.tokenizer_info, cache_enabled=False)
        self.max_entries = max_entries
        self._compile = functools.lru_cache(maxsize=max_entries)(self._compile_uncached)
        self._compile_lock = threading.Lock()  # one compile at a time, as before; look-ups stay free

    @classmethod
    def for_tokenizer(cls, tokenizer, vocab_size: int) -> "GrammarCache":
        with cls._lock:
            cache = cls._per_tokenizer.get(tokenizer)
            if cache is None or cache.tokenizer_info.vocab_size != vocab_size:
                cache = cls(tokenizer, vocab_size)
                cls._per_tokenizer[tokenizer] = cache
            return cache

    @classmethod
    def total_entries(cls) -> int:
        """Compiled grammars held in this process, over every tokenizer."""
        with cls._lock:
            return sum(len(cache) for cache in cls._per_tokenizer.values())

    def __len__(self) -> int:
        return self._compile.cache_info().currsize

    def _compile_uncached(self, key: "Format | tuple[str, str]"):
        with self._compile_lock:
            if isinstance(key, Format):
                return self._compiler.compile_grammar(key.ebnf())
            kind, source = key
            compile_ = {"ebnf": self._compiler.compile_grammar, "json_schema": self._compiler.compile_json_schema,
                        "regex": self._compiler.compile_regex}[kind]
            return compile_(source)

    def compiled(self, fmt: Format | str):
        return self._compile(get_format(fmt))

    def matcher(self, fmt: Format | str):
        import xgrammar as xgr

        return xgr.GrammarMatcher(self.compiled(fmt))

    def grammar_matcher(self, kind: str, source: str):
        """A matcher for a caller's grammar: kind "ebnf", "json_schema" or "regex", compiled once and
        kept in the same LRU as the formats. ValueError names the kind when it does not compile."""
        import xgrammar as xgr

        try:
            return xgr.GrammarMatcher(self._compile((kind, source)))
        except Exception as err:  # xgrammar raises RuntimeError/ValueError with the parser's message
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            message = re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", message)  # xgrammar's "[time] file.cc:line: "
            raise ValueError(f"{kind} does not compile: {message[:300]}") from None
