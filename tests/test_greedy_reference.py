"""The runtime's greedy outputs stay token-identical to the recorded reference (fp32, each
question alone): tests/data/greedy_reference.json, written by tests/tools/record_greedy_reference.py
at the commit it names, before the runtime redesign."""

from __future__ import annotations

import json
from pathlib import Path

from corea_engine.evaluation.datasets import load_gsm8k
from tests.tools.record_greedy_reference import cases

REFERENCE = json.loads((Path(__file__).parent / "data" / "greedy_reference.json").read_text())


def test_greedy_outputs_equal_the_recorded_reference(slm_executor):
    questions = [e.question for e in load_gsm8k("test", limit=20)]
    expected = REFERENCE["outputs"]
    produced = {key: slm_executor.generate(req).token_ids for key, req in cases(questions)}
    assert produced.keys() == expected.keys()
    differing = [key for key in expected if produced[key] != expected[key]]
    assert not differing, f"{len(differing)}/{len(expected)} outputs differ from the reference: {differing[:5]}"
