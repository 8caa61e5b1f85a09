"""Embedded runtime throughput against the engines a user would pick instead, in one run.

  python benchmarks/bench_executor.py [--n 8] [--max-new-tokens 64] [--threads COREA_THREADS or 2]
      [--dtypes float32,bfloat16,bfloat16+int4wo] [--concurrency 8,32] [--busy-neighbour] [--require-llamacpp]

Every row decodes greedily, on the same GSM8K test prompts (the first --n; a concurrency above
--n takes the next questions) with the same budget of new tokens, one row after another:
  llama.cpp     llama-cpp-python's OpenAI-compatible server on loopback with the SmolLM2 GGUF
                (Q4_1) the embedded model is converted from; /v1/completions with the same
                chat-templated prompt text, temperature 0, its repeat penalty off. Single stream
                (the n prompts one after another) and n concurrent (its server runs them one at a
                time: the row says what that gives). Free text only. It runs from its own venv,
                built by `nice -n 19 benchmarks/setup_llamacpp.sh`; without that venv the rows
                are left out with the reason printed (--require-llamacpp makes it an error).
  corea         the TorchExecutor: single stream, and c concurrent for each --concurrency c (c
                prompts submitted together: continuous batching); free text and the JSON contract.
  transformers  `generate` on the same weights: single stream (free text), and one static
                left-padded batch of n (the JSON contract through xgrammar's HF logits processor).
corea and transformers run in each of --dtypes (llama.cpp's weights are the GGUF's); a dtype
with "+int8wo" or "+int4wo" runs corea alone, with that weight-only quantization
(TorchExecutor(quantization=...)).

Tokens are completion tokens as each engine reports them: corea's Result.completion_tokens and
transformers' new tokens, both up to and including the end-of-sequence token; llama.cpp's
usage.completion_tokens, which leaves the end-of-sequence token out (one token less for each
request that stops before the budget). tok/s is a row's tokens over its wall time; "x llama.cpp"
divides by llama.cpp's single-stream tok/s measured under the same condition. grammar is the
executor's time in bitmask fill/apply/accept over its decode-step time (StepStats), JSON rows;
prefill is the share of a corea row's wall time spent prefilling joiners (StepStats.prefill_s).

--busy-neighbour runs every row a second time while one other process spins on the CPU (started
before those rows, not pinned to a core, stopped after them). Results: a table on stdout and the
figures as JSON in --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llamacpp_peer  # noqa: E402
from latency import load_average  # noqa: E402

# A trial run writes under runs/ (ignored); the committed figures are written only when asked for.
DEFAULT_OUT = Path("runs") / "bench" / "executor_cpu.json"
GOALS = "single stream >= 1.0x llama.cpp; 8 concurrent >= 3x llama.cpp single stream; grammar <= 3% of a step"


@dataclass
class Row:
    condition: str  # "baseline" (the machine as it is) or "busy neighbour"
    engine: str  # "llama.cpp", "corea", "transformers"
    dtype: str
    workload: str  # "free text" or "json contract"
    mode: str  # "single stream", "8 concurrent", "static batch 8"
    requests: int
    tokens: int
    seconds: float
    grammar_share: float | None = None  # corea JSON rows: grammar_s / step_s
    prefill_share: float | None = None  # corea rows: prefill_s / seconds
    ratio: float | None = None  # tok/s over llama.cpp single stream, same condition

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds


def count_real(row: list[int], eos: set[int]) -> int:
    """New tokens of one generate() row up to and including the first end-of-sequence token."""
    n = 0
    for token in row:
        n += 1
        if token in eos:
            break
    return n


def json_contract():
    """The JSON contract the benchmarks measure, bounded so an answer ends within a small budget."""
    from corea_engine.contract import get_format

    return get_format("json").bounded(max_reasoning_chars=200, max_answer_chars=24)


def workload_messages(questions: list[str], fmt) -> dict[str, tuple]:
    """{label: (contract, chat messages per question)} of the two workloads: free text and `fmt`."""
    from corea_engine.contract import build_messages

    return {label: (contract, [build_messages(q, contract) for q in questions])
            for label, contract in (("free text", None), ("json contract", fmt))}


def run_executor(executor, requests, concurrent: bool) -> tuple[int, float, float | None, float]:
    """(completion tokens, wall seconds, grammar share of the decode steps, prefill share of the
    wall time) for `requests`."""
    executor.stats.reset()
    t0 = time.perf_counter()
    if concurrent:
        results = [s.wait() for s in [executor.submit(r) for r in requests]]
    else:
        results = [executor.generate(r) for r in requests]
    elapsed = time.perf_counter() - t0
    failed = [r for r in results if r.finish_reason == "error"]
    if failed:
        raise RuntimeError(f"corea: {len(failed)} request(s) failed: {failed[0].error}")
    stats = executor.stats
    share = stats.grammar_s / stats.step_s if stats.step_s else None
    return sum(r.completion_tokens for r in results), elapsed, share, stats.prefill_s / elapsed


def run_hf(model, tokenizer, messages_list, max_new_tokens, compiled_grammar=None) -> tuple[int, float]:
    """(new tokens, wall seconds) of one static left-padded `generate` batch over `messages_list`."""
    import xgrammar as xgr

    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages_list]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    kwargs = {}
    if compiled_grammar is not None:  # the processor holds matcher state: one per call
        kwargs["logits_processor"] = [xgr.contrib.hf.LogitsProcessor(compiled_grammar)]
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, **kwargs)
    elapsed = time.perf_counter() - t0
    new = out[:, batch["input_ids"].shape[1]:].tolist()
    eos = {tokenizer.eos_token_id}
    return sum(count_real(row, eos) for row in new), elapsed


@contextmanager
def busy_neighbour(on: bool):
    """One other process spinning on the CPU while the block runs (nothing when `on` is False)."""
    if not on:
        yield
        return
    # It spins while its parent lives: a benchmark killed outright leaves nothing spinning.
    proc = subprocess.Popen([sys.executable, "-c", "import os\nparent = os.getppid()\nwhile os.getppid() == parent: pass"])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


class Bench:
    """The rows of one run; every measurement goes through here in order."""

    def __init__(self, args, questions, meta: dict):
        self.args = args
        self.budget = args.max_new_tokens
        self.fmt = json_contract()
        workloads = workload_messages(questions, self.fmt)
        self.workloads = tuple((label, contract) for label, (contract, _) in workloads.items())
        self.messages = {label: messages for label, (_, messages) in workloads.items()}
        self.meta = meta  # what the JSON says besides the rows
        self.rows: list[Row] = []
        self.loads: dict[str, list[float]] = {}

    def save(self) -> None:
        """Write the figures so far to --out (after every row: a long run cut short keeps its rows)."""
        self.ratios()
        rows = [{**asdict(r), "tok_s": r.tok_s} for r in self.rows]
        self.args.out.parent.mkdir(parents=True, exist_ok=True)
        self.args.out.write_text(json.dumps({**self.meta, "load_average": self.loads, "rows": rows}, indent=2) + "\n")

    def add(self, condition, engine, dtype, workload, mode, requests, tokens, seconds, share=None,
            prefill=None) -> None:
        row = Row(condition, engine, dtype, workload, mode, requests, tokens, seconds, share, prefill)
        self.rows.append(row)
        self.save()
        grammar = f", grammar {100 * share:.2f}% of a step" if share is not None and workload != "free text" else ""
        prefilled = f", prefill {100 * prefill:.1f}% of the time" if prefill is not None else ""
        print(f"  {engine:<12} {dtype:<15} {workload:<13} {mode:<15} {tokens:>5} tokens {seconds:7.2f} s "
              f"{row.tok_s:7.1f} tok/s{grammar}{prefilled}", flush=True)

    def llamacpp(self, server, condition: str) -> None:
        from corea_engine.models import resolve_model
        from corea_engine.tokenization import encode_chat
        from transformers import AutoTokenizer

        n = self.args.n
        tokenizer = AutoTokenizer.from_pretrained(resolve_model().path)
        messages = self.messages["free text"][:n]
        texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
        ours = sum(len(encode_chat(tokenizer, m)) for m in messages)
        server.complete(texts[0], 4)  # load pages and warm the caches, unmeasured
        for mode, concurrent in (("single stream", False), (f"{n} concurrent", True)):
            tokens, prompt_tokens, seconds = server.run(texts, self.budget, concurrent)
            if prompt_tokens != ours:  # the same text, tokenized by llama.cpp's own tokenizer
                print(f"  note: llama.cpp counted {prompt_tokens} prompt tokens where corea has {ours}")
            self.add(condition, "llama.cpp", "Q4_1", "free text", mode, n, tokens, seconds)

    def corea(self, label: str, condition: str) -> None:
        from corea_engine.runtime import Request, SamplingParams
        from corea_engine.runtime.torch_executor import TorchExecutor

        n, levels = self.args.n, self.args.concurrency

        def requests(workload, contract, count, budget=self.budget):
            return [Request(messages=m, contract=contract, sampling=SamplingParams(max_new_tokens=budget),
                            stop_at_confidence=False) for m in self.messages[workload][:count]]

        dtype, _, quantization = label.partition("+")
        executor = TorchExecutor(dtype=dtype, quantization=quantization or "none", max_batch_size=max([n, *levels]),
                                 threads=self.args.threads or None)
        try:
            # Unmeasured: compile the grammar, warm allocator and kernels at every batch size used.
            for workload, contract in self.workloads:
                executor.generate(requests(workload, contract, 1, budget=4)[0])
            for c in levels:
                run_executor(executor, requests("free text", None, c, budget=2), concurrent=True)
            for workload, contract in self.workloads:
                tokens, seconds, share, prefill = run_executor(executor, requests(workload, contract, n), concurrent=False)
                self.add(condition, "corea", label, workload, "single stream", n, tokens, seconds, share, prefill)
                for c in levels:
                    tokens, seconds, share, prefill = run_executor(executor, requests(workload, contract, c), concurrent=True)
                    self.add(condition, "corea", label, workload, f"{c} concurrent", c, tokens, seconds, share, prefill)
        finally:
            executor.close()

    def transformers(self, dtype: str, condition: str) -> None:
        from corea_engine.contract import GrammarCache
        from corea_engine.models import load_model

        n = self.args.n
        model, tokenizer, _ = load_model(dtype=dtype)
        vocab = model.get_output_embeddings().weight.shape[0]
        grammar = GrammarCache.for_tokenizer(tokenizer, vocab).compiled(self.fmt)
        run_hf(model, tokenizer, self.messages["free text"][:1], 4)  # unmeasured warm-up
        single = [run_hf(model, tokenizer, [m], self.budget) for m in self.messages["free text"][:n]]
        self.add(condition, "transformers", dtype, "free text", "single stream", n,
                 sum(t for t, _ in single), sum(s for _, s in single))
        for label, contract in self.workloads:
            compiled = grammar if contract is not None else None
            tokens, seconds = run_hf(model, tokenizer, self.messages[label][:n], self.budget, compiled)
            self.add(condition, "transformers", dtype, label, f"static batch {n}", n, tokens, seconds)

    def ratios(self) -> None:
        for condition in {r.condition for r in self.rows}:
            base = [r for r in self.rows if r.condition == condition and r.engine == "llama.cpp"
                    and r.mode == "single stream"]
            for row in self.rows:
                if base and row.condition == condition:
                    row.ratio = row.tok_s / base[0].tok_s


def print_table(bench: Bench) -> None:
    head = ("condition", "engine", "dtype", "workload", "mode", "tokens", "seconds", "tok/s", "x llama.cpp", "grammar",
            "prefill")
    print("\n| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for r in bench.rows:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        grammar = f"{100 * r.grammar_share:.2f}%" if r.grammar_share is not None and r.workload != "free text" else "-"
        prefill = f"{100 * r.prefill_share:.1f}%" if r.prefill_share is not None else "-"
        print(f"| {r.condition} | {r.engine} | {r.dtype} | {r.workload} | {r.mode} | {r.tokens} | "
              f"{r.seconds:.2f} | {r.tok_s:.1f} | {ratio} | {grammar} | {prefill} |")
    print(f"\nGoals: {GOALS}.")
    for condition in dict.fromkeys(r.condition for r in bench.rows):
        for dtype in bench.args.dtypes:
            corea = {(r.workload, r.mode): r for r in bench.rows
                     if r.condition == condition and r.engine == "corea" and r.dtype == dtype}
            if not corea:
                continue
            single = corea[("free text", "single stream")]
            batch = corea.get(("free text", f"{bench.args.n} concurrent"))
            shares = [r.grammar_share for r in corea.values() if r.workload != "free text" and r.grammar_share is not None]
            parts = []
            if single.ratio is not None:
                parts.append(f"single stream {single.ratio:.2f}x")
                if batch is not None:
                    parts.append(f"{bench.args.n} concurrent {batch.ratio:.2f}x llama.cpp single stream")
            if shares:
                parts.append(f"grammar at most {100 * max(shares):.2f}% of a step")
            print(f"{condition}, corea {dtype}: " + "; ".join(parts or ["no llama.cpp row to compare with"]))


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def csv(kind):
    return lambda text: [kind(x) for x in text.split(",") if x.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8, help="prompts of the single-stream and batch rows")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="new tokens a request may write (greedy)")
    parser.add_argument("--threads", type=int, default=os.environ.get("COREA_THREADS") or 2,
                        help="torch and llama.cpp threads (default: COREA_THREADS, else 2; 0: torch's "
                             "own default, and llama.cpp gets torch's count)")
    parser.add_argument("--dtypes", "--dtype", dest="dtypes", type=csv(str), default=["float32", "bfloat16"],
                        help="comma-separated torch dtypes for corea and transformers; "
                             "DTYPE+int8wo, DTYPE+int4wo: corea with that weight-only quantization")
    parser.add_argument("--concurrency", type=csv(int), default=[8, 32], help="corea's concurrent rows")
    parser.add_argument("--busy-neighbour", action="store_true", help="also run every row beside one spinning process")
    parser.add_argument("--llamacpp-venv", type=Path, default=llamacpp_peer.DEFAULT_VENV,
                        help="llama-cpp-python's own venv, built by benchmarks/setup_llamacpp.sh (default: %(default)s)")
    parser.add_argument("--require-llamacpp", action="store_true", help="fail when llama.cpp cannot run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the figures as JSON (default: %(default)s; the committed figures are "
                        "benchmarks/results/executor_cpu.json)")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the llama.cpp server and the spinner are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.n < 1 or args.max_new_tokens < 1 or not args.dtypes or any(c < 1 for c in args.concurrency):
        parser.error("--n, --max-new-tokens and every --concurrency must be >= 1; --dtypes must name one")
    from corea_engine.runtime.dtypes import check_quantization

    for label in args.dtypes:
        dtype, plus, quantization = label.partition("+")
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            parser.error(f"--dtypes: {dtype!r} is not a torch dtype")
        try:
            check_quantization(quantization if plus else "none", dtype)
        except ValueError as err:
            parser.error(f"--dtypes: {label!r}: {err}")

    from corea_engine.evaluation.datasets import load_gsm8k
    from corea_engine.models import smollm2_gguf

    missing = llamacpp_peer.missing_reason(args.llamacpp_venv)
    if missing and args.require_llamacpp:
        print(f"error: --require-llamacpp: {missing}", file=sys.stderr)
        sys.exit(2)
    if missing:
        print(f"llama.cpp rows left out: {missing}")
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = args.threads or torch.get_num_threads()

    questions = [e.question for e in load_gsm8k("test", limit=max([args.n, *args.concurrency]))]
    gguf = smollm2_gguf()
    server = None if missing else llamacpp_peer.LlamaCppServer(args.llamacpp_venv, gguf, threads=threads)
    bench = Bench(args, questions, {
        "command": " ".join(["python", "benchmarks/bench_executor.py", *sys.argv[1:]]),
        "config": {"n": args.n, "max_new_tokens": args.max_new_tokens, "threads": threads,
                   "dtypes": args.dtypes, "concurrency": args.concurrency, "greedy": True},
        "machine": machine(),
        "llamacpp": ({"left_out": missing} if missing else
                     {"version": server.version, "gguf": gguf.name, "api": "/v1/completions"}),
        "goals": GOALS,
    })
    conditions = ["baseline", "busy neighbour"] if args.busy_neighbour else ["baseline"]
    print(f"{args.n} GSM8K prompts, greedy, max {args.max_new_tokens} new tokens, {threads} threads, "
          f"corea concurrency {args.concurrency}, dtypes {args.dtypes}")
    with server or nullcontext():
        for condition in conditions:
            with busy_neighbour(condition == "busy neighbour"):
                print(f"\n{condition} (load average {load_average():.2f})", flush=True)
                bench.loads[condition] = [load_average()]
                if server is not None:
                    bench.llamacpp(server, condition)
                for label in args.dtypes:
                    bench.corea(label, condition)
                    if "+" not in label:  # transformers runs no weight-only quantization here
                        bench.transformers(label, condition)
                bench.loads[condition].append(load_average())
    bench.save()
    print_table(bench)
    print(f"\nfigures written to {args.out}")
    if missing:  # said again where the reader looks, after the table
        print(f"llama.cpp rows left out: {missing}")


if __name__ == "__main__":
    main()
