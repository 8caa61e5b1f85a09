"""Record the embedded runtime's greedy token ids on the 20-question set (fp32), the reference the
runtime redesign must reproduce (tests/test_greedy_reference.py).

    python tests/tools/record_greedy_reference.py [--out tests/data/greedy_reference.json]

Each question runs alone (batch of one), free text (48 tokens) and under the bounded json contract.
"""

from __future__ import annotations

import argparse
import json
import subprocess

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
        outputs = {key: executor.generate(req).token_ids for key, req in cases(questions)}
    head = json.dumps({"commit": commit, "dtype": "float32", "free_text_tokens": FREE_TEXT_TOKENS,
                       "contract": CONTRACT, "bounds": BOUNDS})[:-1]
    rows = ",\n".join(f"  {json.dumps(key)}: {json.dumps(ids)}" for key, ids in outputs.items())
    with open(args.out, "w") as f:  # one output per line: a diff shows which changed
        f.write(f'{head}, "outputs": {{\n{rows}\n}}}}\n')


if __name__ == "__main__":
    main()
