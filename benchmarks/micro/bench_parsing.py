"""Contract parsing of a finished completion (every request does this once)."""

from __future__ import annotations

import pytest

from corea_engine.contract import FORMATS, parse_tags

REASONING = "Janet's ducks lay 16 eggs a day. She eats 3 and bakes with 4, so 16 - 3 - 4 = 9 are sold at $2: 9 * 2 = 18."


@pytest.mark.parametrize("name", sorted(FORMATS))
def bench_parse(benchmark, name):
    fmt = FORMATS[name]
    text = fmt.render(REASONING, "18", 0.8)
    parsed = benchmark(fmt.parse, text)
    assert parsed.answer == "18" and abs(parsed.confidence - 0.8) < 1e-9


def bench_parse_tags_lenient(benchmark):
    """The lenient tag parser on a 7B-style output with an analysis block and a percentage."""
    text = f"<think>{REASONING}</think>\n<analysis>checked</analysis>\n<answer> 18 </answer>\n<confidence>80%</confidence>"
    parsed = benchmark(parse_tags, text)
    assert parsed.answer.strip() == "18"
