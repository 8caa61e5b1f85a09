"""The contract: formats render, compile, constrain and parse; the parser reads real recorded outputs."""

from __future__ import annotations

import json

import pytest

from corea_engine.contract import (
    FORMATS,
    SCALE,
    ContractError,
    GrammarCache,
    Parsed,
    UnknownFormatError,
    build_messages,
    get_format,
    parse_confidence,
    parse_tags,
)
from corea_engine.evaluation.datasets import data_root


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from corea_engine.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model().path)


@pytest.fixture(scope="module")
def grammars(tokenizer):
    return GrammarCache.for_tokenizer(tokenizer, 49152)


@pytest.mark.parametrize("name", list(FORMATS))
def test_rendered_text_is_accepted_by_grammar_and_parses_back(name, tokenizer, grammars):
    fmt = FORMATS[name]
    text = fmt.render("First 3 + 4 = 7, then 7 * 2 = 14.", "14", 0.6)
    matcher = grammars.matcher(fmt)
    for token in tokenizer.encode(text, add_special_tokens=False):
        assert matcher.accept_token(token), f"{name}: grammar refused {tokenizer.decode([token])!r} in {text!r}"
    assert matcher.accept_token(tokenizer.eos_token_id) and matcher.is_terminated()
    assert fmt.parse(text) == Parsed("First 3 + 4 = 7, then 7 * 2 = 14.", "14", 0.6)
    assert text.count(fmt.confidence_prefix) == 1


@pytest.mark.parametrize("name", list(FORMATS))
def test_grammar_refuses_out_of_contract_text(name, tokenizer, grammars):
    fmt = FORMATS[name]
    good = fmt.render("ok", "1", 0.5)
    bad_confidence = good.replace("0.5", "1.5")
    too_long = fmt.render("x" * (fmt.max_reasoning_chars + 1), "1", 0.5)
    for bad in (bad_confidence, too_long):
        matcher = grammars.matcher(fmt)
        ids = tokenizer.encode(bad, add_special_tokens=False)
        accepted = all(matcher.accept_token(t) for t in ids) and matcher.accept_token(tokenizer.eos_token_id)
        assert not accepted, f"{name} accepted {bad[:60]!r}"


@pytest.mark.parametrize("name", [n for n, f in FORMATS.items() if f.syntax == "json"])
def test_a_json_answer_cannot_open_with_the_closing_brace(name, tokenizer, grammars):
    fmt = FORMATS[name]

    def accepted(answer):
        matcher = grammars.matcher(fmt)
        ids = tokenizer.encode(fmt.render("ok", answer, 0.5), add_special_tokens=False)
        return all(matcher.accept_token(t) for t in ids) and matcher.accept_token(tokenizer.eos_token_id)

    assert not accepted("}") and not accepted("} 8")
    assert accepted("8}") and accepted("{8}")  # only the first character is held to it


def test_grammar_cache_compiles_once_per_tokenizer(tokenizer):
    cache = GrammarCache.for_tokenizer(tokenizer, 49152)
    assert GrammarCache.for_tokenizer(tokenizer, 49152) is cache
    assert cache.compiled("json") is cache.compiled(FORMATS["json"])


SCRIPTS = {  # first code point of a run of distinct characters, from 1 to 4 UTF-8 bytes each
    "ascii": 0x61, "hebrew": 0x5D0, "devanagari": 0x915, "cjk": 0x4E00, "emoji": 0x1F980,
    "cjk_extension_b": 0x20000, "hieroglyphs": 0x13000,
}


@pytest.mark.parametrize("script", list(SCRIPTS))
@pytest.mark.parametrize("name", ["json", "tags_confidence_first"])
def test_the_token_budget_holds_for_fields_full_of_any_script(name, script, tokenizer, grammars):
    """Both free-text fields at their character bound, in scripts of 1 to 4 bytes a character:
    the grammar admits the text and it fits fmt.max_tokens, which one token a character did not."""
    fmt = FORMATS[name].bounded(max_reasoning_chars=48, max_answer_chars=12)
    first = SCRIPTS[script]
    chars = "".join(chr(first + i % 26 if script == "ascii" else first + i) for i in range(fmt.max_reasoning_chars + fmt.max_answer_chars))
    text = fmt.render(chars[: fmt.max_reasoning_chars], chars[fmt.max_reasoning_chars:], 0.7)
    ids = tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
    matcher = grammars.matcher(fmt)
    assert all(matcher.accept_token(t) for t in ids) and matcher.is_terminated()
    assert len(ids) <= fmt.max_tokens
    one_per_char = len(fmt.render("", "", 0.5)) + fmt.max_reasoning_chars + fmt.max_answer_chars + 1
    if script in ("emoji", "cjk_extension_b", "hieroglyphs"):
        assert len(ids) > one_per_char  # the old budget would have cut it


def test_confidence_first_formats_put_confidence_before_reasoning():
    for name, fmt in FORMATS.items():
        text = fmt.render("because", "42", 0.3)
        first = text.index("0.3") < text.index("because")
        assert first == fmt.confidence_first, name


def test_scale_symbols_are_single_tokens_with_their_values(tokenizer):
    ids = SCALE.token_ids(tokenizer)
    assert len(set(ids)) == 10
    assert [tokenizer.decode([i]) for i in ids] == list("0123456789")
    assert [SCALE.value_of(s) for s in "0369"] == [0.0, 0.3, 0.6, 0.9]


@pytest.mark.parametrize(
    "text, value",
    [("0.85", 0.85), (" 85% ", 0.85), ("100.", 1.0), ("I am 0.9 confident in this answer.", 0.9), ("1", 1.0), ("0", 0.0)],
)
def test_parse_confidence_reads_verbalized_forms(text, value):
    assert parse_confidence(text) == pytest.approx(value)


@pytest.mark.parametrize(
    "text, value",
    [("9/10", 0.9), ("3 out of 5", 0.6), ("Confidence: 7/10", 0.7), ("80/100", 0.8), ("0.8/1", 0.8),
     ("8 on a scale of 0-10", 0.8), ("4 on a 1-5 scale", 0.8), ("4 (1-5)", 0.8), ("scale from 0 to 10: 6", 0.6),
     ("10/10", 1.0)],
)
def test_parse_confidence_reads_fractions_and_stated_scales(text, value):
    assert parse_confidence(text) == pytest.approx(value)
    assert parse_tags(f"<answer>4</answer><confidence>{text}</confidence>").confidence == pytest.approx(value)


@pytest.mark.parametrize(
    "text, message",
    [("0.7-0.8", "range or alternatives"), ("7 or 8 out of 10", "range or alternatives"),
     ("between 0.6 and 0.8", "range or alternatives"), ("70% - 80%", "range or alternatives"),
     ("11/10", "fraction '11/10' is outside"), ("3 out of 0", "outside"),
     ("12 on a scale of 0-10", "does not fit its scale 0-10"), ("on a scale of 1-5", "no value besides the scale")],
)
def test_parse_confidence_refuses_ambiguous_forms_naming_them(text, message):
    with pytest.raises(ContractError, match=message):
        parse_confidence(text)
    with pytest.raises(ContractError, match=message):
        FORMATS["json"].parse(f'{{"reasoning": "r", "answer": "a", "confidence": "{text}"}}')


@pytest.mark.parametrize(
    "text, message",
    [
        ("<answer>4</answer>", "missing <confidence>"),
        ("<confidence>0.4</confidence>", "missing <answer>"),
        ("<answer>4</answer><confidence>high</confidence>", "no number"),
        ("<answer>4</answer><confidence>250</confidence>", r"outside \[0, 1\]"),
        ("<answer>4<confidence>0.3</confidence>", "never closed"),
        ("<answer> </answer><confidence>0.3</confidence>", "<answer> is empty"),
    ],
)
def test_tag_parser_names_what_is_wrong(text, message):
    with pytest.raises(ContractError, match=message):
        parse_tags(text)


@pytest.mark.parametrize(
    "text, message",
    [
        ("no braces here", "no JSON object"),
        ('{"reasoning": "r", "answer": "a", "confidence": 0.', "malformed JSON at character"),
        ('{"reasoning": "r", "answer": "a"}', "lacks confidence"),
        ('{"reasoning": "r", "answer": 3, "confidence": 0.2}', "'answer' must be a string"),
        ('{"reasoning": "r", "answer": "a", "confidence": true}', "must be a number"),
        ('[1, 2]', "no JSON object"),
    ],
)
def test_json_parser_names_what_is_wrong(text, message):
    with pytest.raises(ContractError, match=message):
        FORMATS["json"].parse(text)


def test_unknown_format_is_a_clear_error():
    with pytest.raises(UnknownFormatError, match="unknown contract 'xml'"):
        get_format("xml")


def test_messages_carry_format_instructions_and_question():
    messages = build_messages("What is 2+2?", "tags")
    assert messages[0]["role"] == "system" and "<confidence>" in messages[0]["content"]
    assert messages[-1] == {"role": "user", "content": "What is 2+2?"}


MODELS = ["Base", "RLVR", "Answer-Prob", "RLCR"]


@pytest.mark.parametrize("dataset", ["commonsenseqa", "math-500"])
def test_parser_agrees_with_recorded_confidence_levels(dataset):
    """Every recorded output whose confidence tag parsed (adherence 1) gives the recorded value."""
    path = data_root() / "rlcr_eval_outputs" / f"{dataset}.jsonl"
    checked = 0
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            for model in MODELS:
                if row[f"{model}-conf_format_adherence"] != [1]:
                    continue
                parsed = parse_tags(row[f"{model}-output_0"])
                assert parsed.confidence == pytest.approx(row[f"{model}-confidence_levels"][0], abs=1e-9), (
                    model, row[f"{model}-output_0"][-200:])
                checked += 1
    assert checked >= 4 * (1221 if dataset == "commonsenseqa" else 500) - 5
