"""`corea eval`: accuracy, calibration and cascade cost on a dataset; files and plots in --out.

    corea eval --dataset gsm8k --limit 50 --llm-model smollm2-135m --out runs/gsm8k   (in process)
    corea eval --dataset gsm8k --address localhost:50051 --out runs/remote             (a server)
    corea eval --dataset gsm8k --address corea:50051 --tls-ca ca.pem --token-file t --out runs/r   (secured)
    corea eval --offline --slm rlcr:math-500:RLCR --llm rlcr:math-500:Base --out runs/rlcr
    corea eval --offline --samples runs/gsm8k/samples.jsonl --out runs/again
    corea eval --offline --tier-records rlcr:math-500:Answer-Prob --tier-records rlcr:math-500:RLCR \
        --tier-records rlcr:math-500:Base --tier-prices 1,3,10 --thresholds 0.99,0.6 --out runs/three   (N tiers)
    corea eval --suite rlcr --out runs/suite-rlcr            (a benchmark suite: see eval_suite.py)

Writes samples.jsonl (one row per question), metrics.json, report.md and the plots listed in
corea_engine/evaluation/report.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from .cascade_args import add_cascade_args
from .eval_suite import add_suite_args
from .security_args import add_client_args, connect, uses_client_security


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate the cascade on a dataset (or recorded outputs) and write a report")
    p.add_argument("--out", required=True, help="folder for samples.jsonl, metrics.json, report.md and plots")
    p.add_argument("--dataset", default="gsm8k", help="gsm8k, gsm8k_train, math500, commonsenseqa, bigmath_digits, triviaqa")
    p.add_argument("--limit", type=int, default=None, help="the first N questions")
    p.add_argument("--address", default=None, help="host:port of a running `corea serve` (else the cascade runs in process)")
    p.add_argument("--concurrency", type=int, default=8, help="questions in flight at once")
    p.add_argument("--no-complete", dest="complete", action="store_false",
                   help="ask each question once; without the other tier's answer there is no threshold sweep")
    p.add_argument("--max-reasoning-chars", type=int, default=None, help="bound on the contract's reasoning field")
    p.add_argument("--max-answer-chars", type=int, default=None, help="bound on the contract's answer field")
    g = p.add_argument_group("offline (recorded outputs, no model)")
    g.add_argument("--offline", action="store_true", help="evaluate recorded per-sample outputs")
    g.add_argument("--slm", default=None, help="SLM model records: JSONL path or rlcr:DATASET:MODEL[:parsed|recorded]")
    g.add_argument("--llm", default=None, help="LLM model records, same forms as --slm")
    g.add_argument("--samples", default=None, help="joined sample records (e.g. a previous run's samples.jsonl)")
    g.add_argument("--slm-price", type=float, default=1.0, help="SLM price per completion token, when records carry no cost")
    g.add_argument("--llm-price", type=float, default=10.0, help="LLM price per completion token, when records carry no cost")
    add_tier_record_args(g)
    g.add_argument("--thresholds", default=None, help="N tiers: one threshold per tier but the last, comma-separated")
    add_cascade_args(p)
    add_suite_args(p)
    add_client_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..cli import CommandError

    if args.suite:
        from .eval_suite import run_suite

        return run_suite(args)
    if args.offline:
        return run_offline_tiers(args) if args.tier_records else run_offline(args)
    if args.slm or args.llm or args.samples or args.tier_records:
        raise CommandError("--slm, --llm, --samples and --tier-records need --offline")
    if args.limit is not None and args.limit < 1:
        raise CommandError(f"--limit must be >= 1, got {args.limit}")
    if uses_client_security(args) and not args.address:
        raise CommandError("--tls-* and --token-file are for reaching a server: give --address too")
    return run_online(args)


# ---------------------------------------------------------------------------------------------
# offline


def load_offline_records(args):
    """Sample records from --samples or from --slm and --llm."""
    from ..cli import CommandError
    from ..evaluation.records import RecordError, join, read_model_records, read_samples

    try:
        if args.samples:
            if args.slm or args.llm:
                raise CommandError("give --samples or --slm/--llm, not both")
            return read_samples(args.samples)
        if not args.slm:
            raise CommandError("--offline needs --samples FILE or --slm SPEC (and --llm SPEC for the cascade)")
        slm = read_model_records(args.slm)
        if not args.llm:
            from ..evaluation.records import SampleRecord

            return [SampleRecord(r.id, r.correct, r.confidence, r.tokens) for r in slm]
        return join(slm, read_model_records(args.llm))
    except RecordError as err:
        raise CommandError(str(err)) from None


def run_offline(args) -> int:
    from rich.console import Console

    from ..cli import CommandError
    from ..evaluation.metrics import Prices
    from ..evaluation.records import columns
    from ..evaluation.report import build_metrics, write_outputs

    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise CommandError(f"--threshold must be in [0, 1], got {args.threshold}")
    records = load_offline_records(args)
    if args.limit is not None:
        records = records[: args.limit]
    if not records:
        raise CommandError("no records to evaluate")
    cols = columns(records, Prices(args.slm_price, args.llm_price))
    threshold = 0.5 if args.threshold is None else args.threshold
    result = build_metrics(cols, threshold)
    source = args.samples or f"SLM {args.slm}" + (f", LLM {args.llm}" if args.llm else "")
    result["run"] = {"source": source, "offline": True, "threshold": threshold,
                     "prices per completion token": f"SLM {args.slm_price:g}, LLM {args.llm_price:g} (unless records carry costs)"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from ..evaluation.records import write_jsonl

    write_jsonl(out / "samples.jsonl", records)
    result = write_outputs(out, cols, result, f"offline: {source}")
    _print_summary(Console(), result, out)
    return 0


def add_tier_record_args(g) -> None:
    g.add_argument("--tier-records", action="append", default=None, metavar="SPEC",
                   help="N tiers: one model's records per flag, cheapest first (JSONL path or rlcr:DATASET:MODEL)")
    g.add_argument("--tier-prices", default=None,
                   help="N tiers: price per completion token of each tier, comma-separated (default 1, 3, 10, ...)")


def _numbers(text: str | None, flag: str) -> list[float] | None:
    from ..cli import CommandError

    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CommandError(f"{flag} must be comma-separated numbers, got {text!r}") from None
    import math

    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise CommandError(f"{flag} must be finite and >= 0, got {text!r}")
    return values


def load_tier_columns(args):
    """TierColumns from --tier-records and --tier-prices (default prices 1, 3, 10, 30, ...)."""
    from ..cli import CommandError
    from ..evaluation.ntier import tier_columns
    from ..evaluation.records import RecordError

    if args.slm or args.llm or args.samples:
        raise CommandError("give --tier-records (N tiers) or --slm/--llm/--samples, not both")
    n = len(args.tier_records)
    prices = _numbers(args.tier_prices, "--tier-prices") or [(1, 3, 10, 30, 100, 300)[min(i, 5)] for i in range(n)]
    try:
        return tier_columns(args.tier_records, prices), prices
    except RecordError as err:
        raise CommandError(str(err)) from None


def run_offline_tiers(args) -> int:
    """N tiers from recorded outputs: the cascade at --thresholds, each tier, and the frontier."""
    from ..cli import CommandError
    from ..evaluation.metrics import calibration_summary
    from ..evaluation.ntier import frontier, simulate
    from ..evaluation.report import _clean

    cols, prices = load_tier_columns(args)
    if args.limit is not None:
        cols = cols.subset(slice(0, args.limit))
    thresholds = _numbers(args.thresholds, "--thresholds") or [0.5] * (cols.n_tiers - 1)
    if len(thresholds) != cols.n_tiers - 1 or not all(t <= 1 for t in thresholds):
        raise CommandError(f"--thresholds: give one number in [0, 1] per tier but the last ({cols.n_tiers - 1} "
                           f"for {cols.n_tiers} tiers)")
    outcome = simulate(cols, thresholds)
    result = {
        "run": {"offline": True, "tiers": list(args.tier_records), "prices per completion token": prices,
                "note": "every tier a question reaches is paid in full (recorded answer-first outputs)"},
        "cascade": outcome.as_dict(),
        "tiers": [{"name": name, "accuracy": float(cols.correct[:, k].mean()), "cost": float(cols.cost[:, k].mean()),
                   **({} if k == cols.n_tiers - 1 else calibration_summary(cols.confidence[:, k], cols.correct[:, k]))}
                  for k, name in enumerate(cols.names)],
        "frontier": [p.as_dict() for p in frontier(cols)],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(_clean(result), indent=2) + "\n")
    lines = [f"# Offline {cols.n_tiers}-tier cascade", "", f"tiers (cheapest first): {', '.join(args.tier_records)}; "
             f"prices per completion token {', '.join(f'{p:g}' for p in prices)}", "",
             "| tier | accuracy | share answered | share run | mean cost |", "|---|---|---|---|---|"]
    for k, name in enumerate(cols.names):
        lines.append(f"| {name} | {cols.correct[:, k].mean():.3f} | {outcome.share[k]:.3f} | {outcome.reach[k]:.3f} "
                     f"| {cols.cost[:, k].mean():.1f} |")
    lines += ["", f"cascade at thresholds {', '.join(f'{t:g}' for t in thresholds)}: accuracy {outcome.accuracy:.3f}, "
              f"cost {outcome.cost:.1f} per question = {outcome.cost_fraction:.3f} of the last tier alone"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[4:]))
    print(f"wrote {out}/: metrics.json report.md")
    return 0


# ---------------------------------------------------------------------------------------------
# online


def run_online(args) -> int:
    import asyncio

    from ..cli import CommandError
    from ..evaluation.datasets import UnknownDatasetError, load_dataset

    try:
        examples = load_dataset(args.dataset, limit=args.limit)
    except UnknownDatasetError as err:
        raise CommandError(str(err)) from None
    if args.address:
        for flag in ("llm_address", "llm_openai_base_url", "llm_model", "config", "max_reasoning_chars", "max_answer_chars"):
            if getattr(args, flag):
                raise CommandError(f"--{flag.replace('_', '-')} configures an in-process cascade; the server at "
                                   f"--address uses its own settings")
    return asyncio.run(_online(args, examples))


async def _online(args, examples) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..evaluation.runner import EvalSettings, run_eval
    from .cascade_args import build_cascade, load_config

    console = Console(stderr=True)
    executors, solver = [], None
    if args.address:
        solver = connect(args, aio=True, timeout_s=600.0)
        mode = args.mode or "cascade"
        title_where = f"server {args.address}"
    else:
        config = load_config(args)
        if args.max_reasoning_chars or args.max_answer_chars:
            config = config.replace(max_reasoning_chars=args.max_reasoning_chars, max_answer_chars=args.max_answer_chars)
        mode = config.mode
        with console.status("loading the model(s)"):
            solver, executors = build_cascade(args, config)
        title_where = "in process"
    if mode == "llm_only":
        from ..cli import CommandError

        raise CommandError("corea eval measures the SLM and the cascade: use --mode cascade or slm_only")
    settings = EvalSettings(mode=mode, threshold=args.threshold, confidence_source=args.confidence_source,
                            contract=args.contract, max_new_tokens=args.max_new_tokens,
                            concurrency=args.concurrency, complete=args.complete)
    try:
        with Progress(TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.fields[accuracy]}"), console=console) as progress:
            task = progress.add_task("eval", total=len(examples), accuracy="")
            right = [0, 0]

            def done(row):
                right[0] += bool(row["correct"])
                right[1] += 1
                progress.update(task, advance=1, accuracy=f"accuracy {right[0]}/{right[1]}")

            rows = await run_eval(solver, examples, settings, on_done=done)
    finally:
        await solver.close()
        if not args.address:
            for executor in executors:
                executor.close()
    _write_online(args, rows, mode, title_where)
    return 0


def _online_columns(rows, has_all_llm: bool):
    import math

    import numpy as np

    from ..evaluation.records import Columns

    known = [r for r in rows if r["slm_correct"] is not None]
    return known, Columns(
        np.array([float(r["slm_correct"]) for r in known]),
        np.array([math.nan if r["slm_confidence"] is None else r["slm_confidence"] for r in known], dtype=float),
        np.array([r["slm_cost"] or 0.0 for r in known], dtype=float),
        np.array([float(r["llm_correct"]) for r in known]) if has_all_llm else None,
        np.array([r["llm_cost"] for r in known], dtype=float) if has_all_llm else None,
    )


def _write_online(args, rows, mode: str, where: str) -> None:
    import numpy as np
    from rich.console import Console

    from ..evaluation.records import write_jsonl
    from ..evaluation.report import build_metrics, write_outputs

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "samples.jsonl", rows)
    has_all_llm = all(r["llm_correct"] is not None and r["slm_correct"] is not None for r in rows)
    known, cols = _online_columns(rows, has_all_llm)
    threshold = rows[0]["threshold"] if rows else None
    result = build_metrics(cols, threshold if mode == "cascade" else None)
    measured = {
        "accuracy": float(np.mean([r["correct"] for r in rows])),
        "deferral_rate": float(np.mean([r["deferred"] for r in rows])),
        "degraded_rate": float(np.mean([r["degraded"] for r in rows])),
        "cost per question": float(np.mean([r["cost"] for r in rows])),
        "LLM-alone cost per question": float(np.mean([r["llm_only_cost"] for r in rows])),
        "latency p50 ms": float(np.percentile([r["latency_ms"] for r in rows], 50)),
    }
    llm_only = measured["LLM-alone cost per question"]
    measured["cost reduction"] = 1 - measured["cost per question"] / llm_only if llm_only else float("nan")
    result["online"] = measured
    result["run"] = {"dataset": args.dataset, "questions": len(rows), "where": where, "mode": mode,
                     "threshold": threshold, "confidence source": rows[0]["confidence_source"] if rows else "-",
                     "SLM": rows[0]["slm_model"] if rows else "-", "LLM": rows[0]["llm_model"] if rows else "-",
                     "SLM answer known on": f"{len(known)} of {len(rows)} questions"}
    result = write_outputs(out, cols, result, f"{args.dataset}: {mode} ({where})")
    _print_summary(Console(), result, out)


def _print_summary(console, result: dict, out: Path) -> None:
    from ..evaluation.report import _clean

    slm = result["slm"]
    line = (f"SLM pass@1 {slm['pass@1']:.3f}  ECE {slm['ece']:.3f}  AUROC {slm['auroc']:.3f}  "
            f"Brier {slm['brier']:.3f}  format {slm['format_adherence']:.3f}")
    console.print(line.replace("nan", "-"))
    if "cascade" in result:
        c = result["cascade"]
        console.print(f"cascade @ {c['threshold']:g}: accuracy {c['accuracy']:.3f} (LLM alone {c['llm_accuracy']:.3f}), "
                      f"LLM% {100 * c['deferral_rate']:.1f}, cost reduction {100 * c['cost_reduction']:.1f}%")
    if "online" in result:
        console.print("measured: " + json.dumps(_clean(result["online"])))
    console.print(f"wrote {out}/: samples.jsonl metrics.json report.md " + " ".join(result.get("plots", [])))
