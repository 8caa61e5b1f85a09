"""Answer checkers: is a model's final answer the reference answer?

Three kinds, one per benchmark family:

* ``math``: numeric and symbolic equivalence via math-verify ("1/2" == "0.5" == "\\frac12").
* ``choice``: a multiple-choice option letter. "A", "A) bank", "(A)", "(a)", "Option A", "The
  answer is A", "**A**", and the option text itself ("bank") all select A; the article in "a
  library" does not.
* ``alias``: free text matched against any alias after SQuAD-style normalisation (lowercase,
  punctuation and the articles a/an/the removed, whitespace collapsed).
"""

from __future__ import annotations

import re
import string
import threading

CHECK_KINDS = ("math", "choice", "alias")


class UnknownCheckError(ValueError):
    """A checker kind that is not one of CHECK_KINDS."""


# ---------------------------------------------------------------------------------------------
# math


def _timeout() -> int | None:
    # math-verify's timeouts use SIGALRM, which only the main thread may set.
    return 5 if threading.current_thread() is threading.main_thread() else None


_MATH_WORDS = {"sqrt", "pi", "frac", "dfrac", "infty", "cdot", "times", "left", "right", "text", "boxed"}
_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")


def _parse_math(text: str):
    """Parse as LaTeX math ("6+9i", "11sqrt(2)") unless the text has prose words ("18 dollars"),
    which math mode would read as a product of symbols; fall back to the other reading."""
    from math_verify import parse

    if "$" in text or "\\boxed" in text:
        return parse(text, parsing_timeout=_timeout())
    prose = any(w.lower() not in _MATH_WORDS for w in _WORD.findall(text))
    readings = (text, f"${text}$") if prose else (f"${text}$", text)
    for reading in readings:
        parsed = parse(reading, parsing_timeout=_timeout())
        if parsed:
            return parsed
    return []


def check_math(prediction: str, reference: str) -> bool:
    """True when the prediction is numerically or symbolically the reference."""
    from math_verify import verify

    if not prediction or not prediction.strip():
        return False
    # Bare LaTeX references ("\\left( 3, \\frac{\\pi}{2} \\right)") parse fully only in math mode.
    gold = _parse_math(reference)
    target = _parse_math(prediction)
    if not gold or not target:
        return False
    return bool(verify(gold, target, timeout_seconds=_timeout()))


# ---------------------------------------------------------------------------------------------
# multiple choice

_OPTION_LINE = re.compile(r"^\s*\(?([A-Z])\)\s*(.+?)\s*$", re.MULTILINE)
# Markup models wrap an answer in: **B**, `B`, $\boxed{B}$, \text{B}.
_MARKUP = re.compile(r"\\(?:boxed|text|mathrm|textbf)\s*\{([^{}]*)\}")
# What may stand before the letter: "The answer is", "Final answer:", "Option", "I choose".
_LEAD_IN = re.compile(
    r"^\s*(?:(?:so|thus|therefore|hence)\s*,?\s*)?"
    r"(?:(?:the\s+)?(?:final\s+|correct\s+|best\s+|right\s+)?(?:answer|option|choice)(?:\s+is|\s+would\s+be)?"
    r"|i\s+(?:choose|pick|select|go\s+with))\s*[:\-]?\s*",
    re.IGNORECASE,
)
# A letter that cannot be a word: bracketed "(b)" "[B]", or ending the text or followed by ) . : ,
_LETTER_MARKED = re.compile(r"^[(\[]\s*([A-Za-z])\s*[)\]]|^([A-Za-z])\s*(?:[).:,]|$)")
_LETTER_WORD = re.compile(r"^([A-Za-z])\s+(.+)$", re.DOTALL)


def parse_options(question: str) -> dict[str, str]:
    """Option letter -> option text from lines like 'A) bank'."""
    return {letter: text for letter, text in _OPTION_LINE.findall(question)}


def _strip_markup(text: str) -> str:
    text = _MARKUP.sub(r"\1", text)
    return text.replace("**", "").replace("__", "").strip(" \t\n*_`$")


def _by_option_text(text: str, options: dict[str, str]) -> str | None:
    wanted = normalize_text(_strip_markup(text))
    by_text = [letter for letter, option in options.items() if normalize_text(option) == wanted]
    return by_text[0] if wanted and len(by_text) == 1 else None


def chosen_letter(prediction: str, options: dict[str, str]) -> str | None:
    """The option a prediction selects, by letter or by the option's text; None if unclear.

    Letters are read in any case where they cannot be a word ("(b)", "b)", "b.", "**B**", "The
    answer is B"); a letter followed by words ("A bank", "a library") counts only when those words
    are that option's text, or the letter cannot be an article ("B shoe", "B is correct", "Option A
    which is bank").
    """
    text = _strip_markup(prediction)
    stripped = _LEAD_IN.sub("", text, count=1)
    led = stripped != text  # after "Option"/"The answer is", "A which is bank" is option A
    text = _strip_markup(stripped)
    by_text = _by_option_text(prediction, options) or _by_option_text(text, options)
    if by_text is not None:
        return by_text
    letter = None
    if (marked := _LETTER_MARKED.match(text)) is not None:
        letter = (marked.group(1) or marked.group(2)).upper()
    elif (worded := _LETTER_WORD.match(text)) is not None:
        head, rest = worded.group(1), worded.group(2)
        option = options.get(head.upper())
        if option is not None and normalize_text(rest) == normalize_text(option):
            letter = head.upper()
        elif head.isupper() and (led or head not in "AI" or re.match(r"(?i)(is|would be)\b", rest)):
            letter = head
    if letter is None or (options and letter not in options):
        return None
    return letter


def check_choice(prediction: str, answer_key: str, options: dict[str, str]) -> bool:
    return chosen_letter(prediction or "", options) == answer_key.strip().upper()


# ---------------------------------------------------------------------------------------------
# aliases

_ARTICLES = re.compile(r"\b(a|an|the)\b")
# Punctuation becomes a space so that "Sumo-wrestler" and "sumo wrestler" agree.
_PUNCT = str.maketrans({c: " " for c in string.punctuation + "‘’“”"})


def normalize_text(text: str) -> str:
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def check_alias(prediction: str, aliases) -> bool:
    wanted = normalize_text(prediction or "")
    return bool(wanted) and any(normalize_text(a) == wanted for a in aliases)


def check(kind: str, prediction: str, reference: str, *, aliases=(), options=None) -> bool:
    """Dispatch on the checker kind of a dataset."""
    if kind == "math":
        return check_math(prediction, reference)
    if kind == "choice":
        return check_choice(prediction, reference, options or {})
    if kind == "alias":
        return check_alias(prediction, aliases or (reference,))
    raise UnknownCheckError(f"unknown checker {kind!r}; choose one of: {', '.join(CHECK_KINDS)}")
