"""Record the embedded runtime's greedy token ids on the 20-question set (fp32), the reference the
runtime redesign must reproduce (tests/test_greedy_reference.py).

    python tests/tools/record_greedy_reference.py [--out tests/data/greedy_reference.json]

Each question runs alone (batch of one), free text (48 tokens) and under the bounded json contract.
It also records each json output's confidence reading (position, expected): fp32 reads the same
alone or batched, so tests compare other dtypes with it without rerunning fp32
(tests/test_weight_only_tolerance.py). `commit` names where the outputs were first recorded: it is
kept while they stay the same.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from corea_engine.contract import FORMATS, build_messages
from corea_engine.evaluation.datasets import load_gsm8k
from corea_engine.runtime import Request, SamplingParams
from corea_engine.runtime.torch_executor import TorchExecutor

FREE_TEXT_TOKENS = 48
CONTRACT = "json"
BOUNDS = {"max_reasoning_chars": 64, "max_answer_chars": 16}


def cases(questions):
    fmt = FORMATS[CONTRACT].bounded(**BOUNDS)
    for i, q in enumerate(questions):
        yield f"free-{i}", Request(messages=[{"role": "user", "content": q}],
                                   sampling=SamplingParams(max_new_tokens=FREE_TEXT_TOKENS))
        yield f"{CONTRACT}-{i}", Request(messages=build_messages(q, fmt), contract=fmt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="tests/data/greedy_reference.json")
    args = parser.parse_args()
    questions = [e.question for e in load_gsm8k("test", limit=20)]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    with TorchExecutor(dtype="float32", threads=2) as executor:
        results = {key: executor.generate(req) for key, req in cases(questions)}
    outputs = {key: r.token_ids for key, r in results.items()}
    readings = {key: [r.confidence.position, r.confidence.expected] for key, r in results.items() if r.confidence}
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.exists() else {}
    if previous.get("outputs") == outputs:
        commit = previous["commit"]
    head = json.dumps({"commit": commit, "dtype": "float32", "free_text_tokens": FREE_TEXT_TOKENS,
                       "contract": CONTRACT, "bounds": BOUNDS})[:-1]

    def lines(table):  # one entry per line: a diff shows which changed
        return ",\n".join(f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in table.items())

    out.write_text(f'{head}, "outputs": {{\n{lines(outputs)}\n}}, "readings": {{\n{lines(readings)}\n}}}}\n')


if __name__ == "__main__":
    main()
