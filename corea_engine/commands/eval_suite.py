"""`corea eval --suite NAME`: one benchmark report of a cascade configuration on a named suite.

    corea eval --suite rlcr --out runs/suite-rlcr                        (recorded 7B outputs, no model)
    corea eval --suite default --limit 20 --llm-model smollm2-135m --out runs/suite-default
    corea eval --suite default --rows runs/suite-default/rows.jsonl --target-deferral 0.5 --out runs/again

Suites are defined in corea_engine/evaluation/suites.py. Writes suite.json (schema
corea.eval_suite/1: figures, fitted policy and calibrator, the run's settings and seed),
report.md, rows.jsonl (one row per question), calibrator.json and the plots of
corea_engine/evaluation/suite_report.py.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path


def add_suite_args(p) -> None:
    g = p.add_argument_group("benchmark suite (--suite)")
    g.add_argument("--suite", default=None, help="run a named suite: default, arithmetic (online); rlcr, answer-prob, rlcr-reverse (offline)")
    g.add_argument("--target-deferral", type=float, default=0.3,
                   help="the deferral rate the policy is fitted to in-domain (ignored when --threshold is given)")
    g.add_argument("--holdout", type=float, default=0.5, help="share of in-domain questions kept out of the fit to check in-domain (0: none)")
    g.add_argument("--seed", type=int, default=0, help="the in-domain split and the tie draws")
    g.add_argument("--rows", default=None,
                   help="re-analyse the rows.jsonl (or rows.partial.jsonl) of an earlier run of this suite: no model runs")
    g.add_argument("--no-second-order", dest="second_order", action="store_false",
                   help="online: do not also time the decision with the contract's other field order")


def other_order(contract: str) -> str:
    """The same syntax with the other field order: json <-> json_confidence_first."""
    suffix = "_confidence_first"
    return contract[: -len(suffix)] if contract.endswith(suffix) else contract + suffix


def _check(args, suite) -> None:
    from ..cli import CommandError

    if args.limit is not None and args.limit < 1:
        raise CommandError(f"--limit must be >= 1, got {args.limit}")
    if not 0 <= args.target_deferral <= 1:
        raise CommandError(f"--target-deferral must be in [0, 1], got {args.target_deferral}")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise CommandError(f"--threshold must be in [0, 1], got {args.threshold}")
    if not 0 <= args.holdout < 1:
        raise CommandError(f"--holdout must be in [0, 1), got {args.holdout}")
    if args.rows and args.limit is not None:
        raise CommandError("--rows re-analyses every row of the file: drop --limit")
    if args.slm or args.llm or args.samples or args.offline:
        raise CommandError("--suite names its own data: drop --offline, --slm, --llm and --samples")
    if args.address:
        raise CommandError("--suite runs the cascade in this process (it times each decision): drop --address")
    if suite.kind == "offline" and args.confidence_source == "expected":
        raise CommandError(f"suite {suite.name} is recorded outputs: they carry the sampled (stated) confidence only")


def read_rows(path: str, suite) -> dict[str, list[dict]]:
    """Rows by dataset from a suite's rows file; CommandError names a bad line or a foreign dataset."""
    from ..cli import CommandError

    known = {d.name for d in suite.datasets}
    rows: dict[str, list[dict]] = {}
    try:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    name = row.pop("dataset")
                except (json.JSONDecodeError, KeyError, AttributeError):
                    raise CommandError(f"{path}:{n}: not a suite row (JSON with a dataset field)") from None
                if name not in known:
                    raise CommandError(f"{path}:{n}: dataset {name!r} is not in suite {suite.name}")
                rows.setdefault(name, []).append(row)
    except OSError as err:
        raise CommandError(f"cannot read {path}: {err.strerror}") from None
    return rows


def run_suite(args) -> int:
    from ..cli import CommandError
    from ..evaluation.suites import UnknownSuiteError, get_suite

    try:
        suite = get_suite(args.suite)
    except UnknownSuiteError as err:
        raise CommandError(str(err)) from None
    _check(args, suite)
    started = time.time()
    if args.rows:
        rows = read_rows(args.rows, suite)
        source = args.confidence_source or ("sampled" if suite.kind == "offline" else "expected")
        settings = {"rows_from": args.rows}
    elif suite.kind == "offline":
        from ..evaluation.metrics import Prices
        from ..evaluation.records import RecordError
        from ..evaluation.suite_runner import collect_offline

        try:
            rows = collect_offline(suite, Prices(args.slm_price, args.llm_price))
        except RecordError as err:
            raise CommandError(str(err)) from None
        if args.limit is not None:
            rows = {name: r[: args.limit] for name, r in rows.items()}
        source, settings = "sampled", {"prices_per_completion_token": {"slm": args.slm_price, "llm": args.llm_price},
                                       "slm": f"recorded {suite.slm}", "llm": f"recorded {suite.llm}"}
    else:
        import asyncio

        rows, source, settings = asyncio.run(_online(args, suite))
    _write(args, suite, rows, source, settings, started)
    return 0


async def _online(args, suite):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ..cli import CommandError
    from ..evaluation.datasets import load_dataset
    from ..evaluation.runner import EvalSettings
    from ..evaluation.suite_runner import collect_online
    from .cascade_args import build_cascade, load_config

    examples = {name: load_dataset(name, limit=args.limit) for name in (d.name for d in suite.datasets)}
    config = load_config(args)
    if args.max_reasoning_chars or args.max_answer_chars:
        config = config.replace(max_reasoning_chars=args.max_reasoning_chars, max_answer_chars=args.max_answer_chars)
    if config.mode != "cascade":
        raise CommandError("--suite measures the cascade: drop --mode (both tiers are asked on every question)")
    console = Console(stderr=True)
    with console.status("loading the model(s)"):
        cascade, executors = build_cascade(args, config)
    settings = EvalSettings(mode="cascade", threshold=args.threshold, confidence_source=args.confidence_source,
                            contract=args.contract, max_new_tokens=args.max_new_tokens, concurrency=args.concurrency)
    second = other_order(config.contract) if args.second_order else None
    total = sum(len(e) for e in examples.values())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    partial = open(out / "rows.partial.jsonl", "w")  # each row as it comes: a stopped run keeps its work

    def done(dataset, row):
        partial.write(json.dumps({"dataset": dataset, **row}) + "\n")
        partial.flush()
        progress.advance(task)

    try:
        with Progress(TextColumn(f"[bold]suite {suite.name}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TimeRemainingColumn(), console=console) as progress:
            task = progress.add_task("questions", total=total)
            rows = await collect_online(cascade, examples, settings, second_contract=second, on_done=done)
    finally:
        partial.close()
        await cascade.close()
        for executor in executors:
            executor.close()
    served = asdict(config)
    served = {k: v for k, v in served.items() if "token" not in k and "tls" not in k and "api_key" not in k}
    info = {"cascade_config": served, "second_contract": second, "concurrency": args.concurrency,
            "slm": getattr(cascade.slm, "model_name", ""), "llm": getattr(cascade.llm, "model_name", "")}
    return rows, config.confidence_source if args.confidence_source is None else args.confidence_source, info


def _write(args, suite, rows, source, settings, started) -> None:
    import platform

    from rich.console import Console

    from ..cli import CommandError
    from ..evaluation.calibration import CalibrationError
    from ..evaluation.calibrators import IsotonicCalibrator
    from ..evaluation.records import write_jsonl
    from ..evaluation.report import _clean
    from ..evaluation.suite_metrics import analyse
    from ..evaluation.suite_report import markdown, write_plots

    try:
        result = analyse(suite, rows, source=source, target_deferral=args.target_deferral, threshold=args.threshold,
                         holdout=args.holdout, seed=args.seed)
    except CalibrationError as err:
        raise CommandError(str(err)) from None
    arguments = {k: v for k, v in vars(args).items() if k != "func" and isinstance(v, (str, int, float, bool, type(None)))}
    result["config"] = {
        "suite": suite.name, "seed": args.seed, "target_deferral": args.target_deferral, "threshold": args.threshold,
        "holdout": args.holdout, "confidence_source": source, "questions_per_dataset": args.limit,
        "questions": {name: len(r) for name, r in rows.items()}, **settings, "arguments": arguments,
        "command": _command(arguments), "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": time.time() - started, "python": platform.python_version(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    calibrator = IsotonicCalibrator.from_dict(result["fit"]["calibrator"])
    calibrator.save(out / "calibrator.json")
    write_jsonl(out / "rows.jsonl", ({"dataset": name, **row} for name, rs in rows.items() for row in rs))
    (out / "suite.json").write_text(json.dumps(_clean(result), indent=2) + "\n")
    (out / "report.md").write_text(markdown(result))
    write_plots(out, result, rows)
    (out / "rows.partial.jsonl").unlink(missing_ok=True)
    _print_summary(Console(), result, out)


def _command(arguments: dict) -> str:
    """The command line that repeats this run (the arguments that differ from no flag at all)."""
    parts = ["corea", "eval"]
    for key in ("suite", "rows", "limit", "llm_model", "model", "threshold", "target_deferral", "holdout", "seed", "contract",
                "confidence_source", "max_new_tokens", "max_reasoning_chars", "max_answer_chars", "concurrency",
                "slm_price", "llm_price", "config", "out"):
        value = arguments.get(key)
        if value is not None:
            parts += [f"--{key.replace('_', '-')}", str(value)]
    if arguments.get("second_order") is False:
        parts.append("--no-second-order")
    return " ".join(parts)


def _print_summary(console, result, out) -> None:
    o = result["overall"]
    for role in ("in_domain", "out_of_domain"):
        p = o[role]
        if p is None:
            continue
        apgr = p["routing"]["apgr"]
        console.print(f"{role}: n {p['n']}  SLM {p['accuracy']['slm']:.3f}  LLM {p['accuracy']['llm']:.3f}  "
                      f"cascade {p['accuracy']['cascade']:.3f}  deferred {100 * p['deferral_rate']:.1f}%  "
                      f"cost saved {100 * p['cost']['saved_fraction']:.1f}%  APGR {'-' if apgr is None else f'{apgr:.3f}'}")
    console.print(f"wrote {out}/: suite.json report.md rows.jsonl calibrator.json deferral_curve.png reliability.png "
                  "decision_latency_cdf.png")
