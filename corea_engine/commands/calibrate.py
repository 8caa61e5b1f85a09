"""`corea calibrate`: choose the deferral threshold for a target from per-sample records.

    corea calibrate --slm rlcr:math-500:RLCR --llm rlcr:math-500:Base --target-deferral 0.3
    corea calibrate --samples runs/gsm8k/samples.jsonl --max-accuracy-drop 2
    corea calibrate --slm a.jsonl --llm b.jsonl --cost-budget 0.5 --holdout-samples other.jsonl
    corea calibrate --fit isotonic --slm rlcr:math-500:RLCR --model M --contract json --out cal.json
    corea calibrate --tier-records A --tier-records B --tier-records C --tier-prices 1,3,10 --cost-budget 0.5

N tiers (--tier-records, cheapest first): the thresholds of every tier but the last are fitted jointly
for --cost-budget (most accurate within the budget) or --target-accuracy (cheapest reaching it), by
an exhaustive search over each tier's distinct stated confidences on the calibration half
(evaluation/ntier.py: exact there, no guarantee beyond it); the held-out half reports accuracy and
cost with 95% bootstrap intervals and whether the target held.

--fit KIND (isotonic, platt, histogram, temperature) fits a calibrator on the calibration half
instead and writes it to --out (a corea.calibrator/1 file naming the model, contract and confidence
source it is for; `corea serve --calibrator` refuses it for any other); stdout gets held-out ECE,
AUROC and Brier before and after, with 95% bootstrap intervals.

One target: --target-deferral RATE (share of questions sent to the LLM), --max-accuracy-drop
POINTS (largest cost saving with accuracy at most this many points below the LLM alone), or
--cost-budget FRACTION (most accurate policy costing at most this fraction of the LLM alone).
By default half of the records (a seeded random split) calibrate and the other half check.
The result (JSON on stdout and in --out) gives the threshold, the tie probability (see
corea_engine/evaluation/calibration.py), the nearest plain threshold, and the expected deferral
rate, accuracy and cost with 95% bootstrap intervals, on both halves.
"""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="choose the deferral threshold from a calibration set")
    g = p.add_argument_group("records (as `corea eval --offline`)")
    g.add_argument("--slm", default=None, help="SLM model records: JSONL path or rlcr:DATASET:MODEL[:parsed|recorded]")
    g.add_argument("--llm", default=None, help="LLM model records, same forms as --slm")
    g.add_argument("--samples", default=None, help="joined sample records (e.g. a `corea eval` samples.jsonl)")
    g.add_argument("--slm-price", type=float, default=1.0, help="SLM price per completion token, when records carry no cost")
    g.add_argument("--llm-price", type=float, default=10.0, help="LLM price per completion token, when records carry no cost")
    from .eval import add_tier_record_args

    add_tier_record_args(g)
    f = p.add_argument_group("fit a calibrator instead (confidence -> probability of being right)")
    f.add_argument("--fit", choices=["isotonic", "platt", "histogram", "temperature"], default=None,
                   help="fit this calibrator on the calibration half and write it to --out")
    f.add_argument("--source", choices=["expected", "sampled"], default="expected",
                   help="the confidence the records carry, as the server will read it")
    f.add_argument("--model", default="", help="the SLM the calibrator is for (a server running another refuses it)")
    f.add_argument("--contract", default="", help="the output contract it is for (likewise)")
    f.add_argument("--plot", default=None, help="folder for reliability diagrams of the held-out records, before and after")
    t = p.add_mutually_exclusive_group()
    t.add_argument("--target-deferral", type=float, help="share of questions to defer, 0..1")
    t.add_argument("--max-accuracy-drop", type=float, help="points of accuracy below the LLM alone that may be lost")
    t.add_argument("--cost-budget", type=float, help="cost as a fraction of the LLM (the last tier) alone, e.g. 0.5")
    t.add_argument("--target-accuracy", type=float, help="N tiers: the accuracy to reach (0..1), at the lowest cost")
    p.add_argument("--calibrator", default=None,
                   help="choose the threshold on this calibrator's output (what `corea serve --calibrator` compares)")
    p.add_argument("--holdout", type=float, default=0.5, help="share of the records held out to check (0: none)")
    p.add_argument("--holdout-samples", default=None, help="check on these sample records instead of a split")
    p.add_argument("--seed", type=int, default=0, help="split, tie draws and bootstrap")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
    p.add_argument("--out", default=None, help="also write the result JSON here")
    p.set_defaults(func=run, offline=True, limit=None)


def run(args) -> int:
    from ..cli import CommandError

    if args.fit:
        return run_fit(args)
    if args.tier_records:
        return run_tiers(args)
    if args.target_accuracy is not None:
        raise CommandError("--target-accuracy is for N tiers (--tier-records); two tiers: --max-accuracy-drop")
    if args.target_deferral is None and args.max_accuracy_drop is None and args.cost_budget is None:
        raise CommandError("give one target (--target-deferral, --max-accuracy-drop, --cost-budget) or --fit KIND")
    from rich.console import Console

    from ..cli import CommandError
    from ..evaluation.calibration import CalibrationError, Target, calibrate, split
    from ..evaluation.calibrators import CalibratorError
    from ..evaluation.metrics import Prices
    from ..evaluation.records import RecordError, columns, read_samples
    from ..evaluation.report import _clean
    from .eval import load_offline_records

    if args.target_deferral is not None:
        target_args = ("deferral_rate", args.target_deferral)
    elif args.max_accuracy_drop is not None:
        target_args = ("max_accuracy_drop", args.max_accuracy_drop)
    else:
        target_args = ("cost_budget", args.cost_budget)
    try:
        target = Target(*target_args)
        prices = Prices(args.slm_price, args.llm_price)
        cols = columns(load_offline_records(args), prices)
        if args.calibrator:
            cols = _calibrated(cols, args.calibrator)
        if args.holdout_samples:
            calib, held = cols, columns(read_samples(args.holdout_samples), prices)
            held = _calibrated(held, args.calibrator) if args.calibrator else held
        elif args.holdout > 0:
            calib_index, held_index = split(len(cols), args.holdout, args.seed)
            calib, held = cols.subset(calib_index), cols.subset(held_index)
        else:
            calib, held = cols, None
        result = calibrate(calib, target, holdout=held, seed=args.seed, bootstrap=args.bootstrap)
    except (CalibrationError, RecordError, CalibratorError) as err:
        raise CommandError(str(err)) from None
    out = _clean(result.as_dict())
    out["source"] = args.samples or f"SLM {args.slm}, LLM {args.llm}"
    text = json.dumps(out, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    _print_table(Console(stderr=True), result)
    print(text, file=sys.stdout)
    return 0


def _print_table(console, result) -> None:
    from rich.table import Table

    p, plain = result.policy, result.plain_policy
    console.print(f"target {result.target['kind']} = {result.target['value']:g}: threshold {p.threshold:g}, "
                  f"tie-defer probability {p.tie_defer_prob:.3f} (plain: threshold {plain.threshold:g}"
                  f"{', defer all' if plain.tie_defer_prob == 1.0 else ''})")
    table = Table()
    for column in ("set", "n", "LLM%", "accuracy", "cost reduction", "accuracy drop (pts)"):
        table.add_column(column)
    sets = [("calibration", result.calibration), ("held out", result.holdout)]
    for name, ev in sets:
        if ev is None:
            continue
        e, ci = ev.expected, ev.bootstrap_95

        def cell(metric, scale=100.0, digits=1):
            text = f"{scale * e[metric]:.{digits}f}"
            if metric in ci:
                text += f" [{scale * ci[metric][0]:.{digits}f}, {scale * ci[metric][1]:.{digits}f}]"
            return text

        table.add_row(name, str(ev.n), cell("deferral_rate"), cell("accuracy"), cell("cost_reduction"), cell("accuracy_drop"))
    if result.holdout is not None:
        r = result.holdout.realised
        table.add_row("held out, realised", str(result.holdout.n), f"{100 * r['deferral_rate']:.1f}",
                      f"{100 * r['accuracy']:.1f}", f"{100 * r['cost_reduction']:.1f}", f"{100 * r['accuracy_drop']:.1f}")
    console.print(table)
    console.print("expected values with 95% bootstrap intervals; realised = one draw of the tie randomisation")
    if result.target_in_holdout_interval is not None:
        console.print(f"target inside the held-out 95% Wilson interval: {result.target_in_holdout_interval}; "
                      f"inside the two-sample 95% interval: {result.target_in_two_sample_interval}")
    for note in result.notes:
        console.print(f"note: {note}")


def _calibrated(cols, path: str):
    """The columns with the confidence passed through the calibrator file at `path`."""
    import dataclasses

    from ..evaluation.calibrators import Calibrator, CalibratorError

    try:
        calibrator = Calibrator.load(path)
    except CalibratorError as err:
        raise CalibratorError(f"--calibrator: {err}") from None
    return dataclasses.replace(cols, slm_confidence=calibrator.apply(cols.slm_confidence))


def run_fit(args) -> int:
    """Fit a calibrator on the calibration half; held-out ECE / AUROC / Brier before and after."""
    from ..cli import CommandError
    from ..evaluation.calibration import split
    from ..evaluation.calibrators import Calibrator, CalibratorError
    from ..evaluation.metrics import Prices
    from ..evaluation.records import RecordError, columns, read_samples
    from .eval import load_offline_records

    if not args.out:
        raise CommandError("--fit writes the calibrator to --out FILE")
    try:
        cols = columns(load_offline_records(args), Prices(args.slm_price, args.llm_price))
        if args.holdout_samples:
            calib, held = cols, columns(read_samples(args.holdout_samples))
        elif args.holdout > 0:
            calib_index, held_index = split(len(cols), args.holdout, args.seed)
            calib, held = cols.subset(calib_index), cols.subset(held_index)
        else:
            calib, held = cols, None
        fitted_on = args.samples or args.slm
        cal = Calibrator.fit(calib.slm_confidence, calib.slm_correct, kind=args.fit, source=args.source,
                             fitted_on=fitted_on, model=args.model, contract=args.contract)
    except (CalibratorError, RecordError) as err:
        raise CommandError(str(err)) from None
    cal.save(args.out)
    out = {"calibrator": args.out, "kind": cal.kind, "n_fit": cal.n}
    if held is not None:
        out["holdout"] = compare(held.slm_confidence, held.slm_correct, cal, seed=args.seed, bootstrap=args.bootstrap)
        if args.plot:
            out["plots"] = _plot(held, cal, args.plot)
    print(json.dumps(out, indent=2))
    return 0


def _plot(held, cal, folder: str) -> list[str]:
    import dataclasses
    from pathlib import Path

    from ..evaluation.report import plot_reliability

    Path(folder).mkdir(parents=True, exist_ok=True)
    paths = []
    for name, cols in (("raw", held), ("calibrated", dataclasses.replace(held, slm_confidence=cal.apply(held.slm_confidence)))):
        path = Path(folder) / f"reliability_{name}.png"
        plot_reliability(cols, path, f"held out, {name} confidence ({cal.kind} calibrator)")
        paths.append(str(path))
    return paths


def compare(confidence, correct, cal, *, seed: int = 0, bootstrap: int = 1000) -> dict:
    """ECE, AUROC and Brier of the raw and calibrated confidence, with 95% bootstrap intervals, and their std."""
    import numpy as np

    from ..evaluation.metrics import auroc, brier, ece

    conf, corr = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    keep = ~np.isnan(conf)
    conf, corr = conf[keep], corr[keep]
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(conf), len(conf)) for _ in range(bootstrap)]
    out = {"n": int(len(conf))}
    for name, values in (("raw", conf), ("calibrated", cal.apply(conf))):
        row = {}
        for metric, fn in (("ece", ece), ("auroc", auroc), ("brier", brier)):
            point = float(fn(values, corr))
            resampled = np.array([fn(values[i], corr[i]) for i in draws], dtype=float)
            resampled = resampled[np.isfinite(resampled)]
            row[metric] = point
            if len(resampled):
                row[f"{metric}_95"] = [float(np.quantile(resampled, 0.025)), float(np.quantile(resampled, 0.975))]
        row["std"] = float(np.std(values))  # spread across questions: what a threshold can act on
        out[name] = row
    return out


def run_tiers(args) -> int:
    """Joint thresholds for N tiers on the calibration half, checked on the held-out half."""
    from ..cli import CommandError
    from ..evaluation.calibration import CalibrationError, split
    from ..evaluation.ntier import FitError, fit
    from ..evaluation.report import _clean
    from .eval import load_tier_columns

    if args.cost_budget is None and args.target_accuracy is None:
        raise CommandError("N tiers: give --cost-budget FRACTION or --target-accuracy ACCURACY")
    cols, prices = load_tier_columns(args)
    try:
        if args.holdout > 0:
            calib_index, held_index = split(len(cols), args.holdout, args.seed)
            calib, held = cols.subset(calib_index), cols.subset(held_index)
        else:
            calib, held = cols, None
        result = fit(calib, cost_budget=args.cost_budget, target_accuracy=args.target_accuracy, holdout=held,
                     seed=args.seed, bootstrap=args.bootstrap)
    except (CalibrationError, FitError) as err:
        raise CommandError(str(err)) from None
    out = _clean(result.as_dict())
    out["tiers"], out["prices"] = list(args.tier_records), prices
    out["serve"] = ("corea serve " + " ".join(
        f"--tier name={name},threshold={t:g},..." for name, t in zip(cols.names, result.thresholds)) + f" --tier name={cols.names[-1]},...")
    text = json.dumps(out, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0
