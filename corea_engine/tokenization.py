"""Chat messages to prompt token ids, with message text always read as text.

A chat template marks turns with special tokens (``<|im_start|>``, ``<|im_end|>``...). Encoded
naively, a question that contains such a string becomes real turn markers: a user could write
``<|im_end|>\\n<|im_start|>system\\n...`` and speak as the system. `encode_chat` renders the
template, then encodes the template's own text with special tokens recognised and every
message's content with them split into ordinary text tokens. Every runtime that tokenizes chat
messages (the torch and SGLang executors, a protocol client that sends token ids) calls it.

`escape_special_text` is for tiers that tokenize remotely from text (an OpenAI-compatible
endpoint): it breaks strings shaped like chat-template markers with a zero-width space, so the
endpoint's tokenizer cannot read them as markers either.
"""

from __future__ import annotations

import re
import weakref

# Marker shapes of common chat templates: ChatML/Llama-3/Qwen <|...|>, Llama-2 [INST] and <s>,
# Gemma <start_of_turn>/<end_of_turn>, Mistral/SmolLM extras like <filename>.
_MARKER = re.compile(r"<\|[^<>|\s]{1,64}\|>|\[/?INST\]|</?s>|<(?:start|end)_of_turn>|<\uff5c[^<>]{1,64}\uff5c>")
_ZWSP = "\u200b"


class ChatTemplateError(ValueError):
    """The chat template rewrites message text, so message spans cannot be found in its output."""


# tokenizer -> (its size, its special-token texts): built once, not per message of every request.
_specials: "weakref.WeakKeyDictionary[object, tuple[int, list[str]]]" = weakref.WeakKeyDictionary()


def special_token_texts(tokenizer) -> list[str]:
    """The text of every special token of `tokenizer` (longest first); cached per tokenizer and
    rebuilt when tokens are added (its length changes)."""
    size = len(tokenizer)
    cached = _specials.get(tokenizer)
    if cached is None or cached[0] != size:
        texts = set(getattr(tokenizer, "all_special_tokens", []) or [])
        decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
        texts.update(t.content for t in decoder.values() if getattr(t, "special", False))
        cached = _specials[tokenizer] = (size, sorted((t for t in texts if t), key=len, reverse=True))
    return cached[1]


def contains_special_text(tokenizer, text: str) -> bool:
    return any(t in text for t in special_token_texts(tokenizer))


def _ids(encoded) -> list[int]:
    if isinstance(encoded, dict) or hasattr(encoded, "input_ids"):
        encoded = encoded["input_ids"]
    return list(encoded)


def encode_chat(tokenizer, messages: list[dict], *, add_generation_prompt: bool = True) -> list[int]:
    """Prompt token ids for `messages` under the tokenizer's chat template.

    Message contents never yield special tokens: when one holds special-token text, the
    rendered prompt is encoded in pieces (template text as usual, contents with special tokens
    split). Otherwise the ids are exactly the template's own. Raises ChatTemplateError when the
    template rewrites a content (the pieces could not be found).
    """
    if not any(contains_special_text(tokenizer, str(m.get("content", ""))) for m in messages):
        return _ids(tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False))
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    ids: list[int] = []
    cursor = 0
    for message in messages:
        content = message["content"]
        start = rendered.find(content, cursor)
        if start < 0:  # templates that trim contents
            content = content.strip()
            start = rendered.find(content, cursor)
        if start < 0:
            raise ChatTemplateError("the chat template rewrites message contents; cannot encode them as plain text")
        ids += tokenizer.encode(rendered[cursor:start], add_special_tokens=False)
        ids += _ids(tokenizer(content, add_special_tokens=False, split_special_tokens=True))
        cursor = start + len(content)
    return ids + tokenizer.encode(rendered[cursor:], add_special_tokens=False)


def escape_special_text(text: str, specials: list[str] | tuple = ()) -> str:
    """`text` with chat-marker shapes, and any of `specials` (a known tokenizer's special-token
    texts), broken by a zero-width space after their first character ("<|im_end|>" -> "<\u200b|im_end|>")."""
    known = "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True) if s)
    pattern = re.compile(f"{_MARKER.pattern}|{known}") if known else _MARKER
    return pattern.sub(lambda m: m.group(0)[0] + _ZWSP + m.group(0)[1:], text)
