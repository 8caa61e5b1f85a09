"""N tiers offline: the cascade of several recorded models, its frontier, and joint thresholds.

Columns hold, per question and tier, whether the tier's answer is right, its stated confidence
(NaN: none) and what running it costs (completion tokens x its price). The routing is the served
rule (policy.route_weights): tier k answers when every earlier tier deferred and it does not; the
last answers the rest. Every tier a question reaches is paid in full: the records are complete
answer-first outputs, so the saving of an early deferral (confidence-first, online) is not in them.

Joint thresholds (`fit`): an exhaustive search over every tuple of plain thresholds (one per tier
but the last, each one of that tier's distinct stated confidences on the calibration half, the
only values where the outcome can change) for the most accurate tuple within a cost budget, or
the cheapest reaching a target accuracy; ties go to the lower cost, then the higher accuracy.
It is exact on the calibration half and guarantees nothing beyond it: the held-out half measures
how much the chosen tuple slips (bootstrap 95% intervals), which is what `corea calibrate` reports.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from ..policy import TierPolicy, route_weights, weights_grid
from .records import RecordError, read_model_records

MAX_GRID = 2_000_000  # threshold tuples a search may visit


@dataclass(frozen=True)
class TierColumns:
    names: tuple[str, ...]
    correct: np.ndarray  # (n, N) 0/1
    confidence: np.ndarray  # (n, N) NaN: none stated
    cost: np.ndarray  # (n, N) cost of running tier k on the question

    def __len__(self) -> int:
        return int(self.correct.shape[0])

    @property
    def n_tiers(self) -> int:
        return len(self.names)

    def subset(self, index) -> "TierColumns":
        return TierColumns(self.names, self.correct[index], self.confidence[index], self.cost[index])

    def pick(self, tiers: list[int]) -> "TierColumns":
        """A cascade of some of the tiers, in the same order."""
        return TierColumns(tuple(self.names[k] for k in tiers), self.correct[:, tiers], self.confidence[:, tiers],
                           self.cost[:, tiers])


def tier_columns(specs: list[str], prices: list[float], names: list[str] | None = None) -> TierColumns:
    """Model records of each tier (paths or rlcr:DATASET:MODEL specs, cheapest first) joined by id in
    the first tier's order; cost = completion tokens x the tier's price per token."""
    if len(specs) < 2:
        raise RecordError(f"a cascade needs at least two tiers, got {len(specs)}")
    if len(prices) != len(specs):
        raise RecordError(f"give one price per tier: {len(specs)} tiers, {len(prices)} prices")
    tiers = [read_model_records(spec) for spec in specs]
    by_id = [{r.id: r for r in records} for records in tiers]
    ids = [r.id for r in tiers[0]]
    for spec, table in zip(specs[1:], by_id[1:]):
        missing = [i for i in ids if i not in table]
        if missing:
            raise RecordError(f"{len(missing)} ids of {specs[0]} have no record in {spec}, e.g. {missing[:3]}")
    rows = [[table[i] for table in by_id] for i in ids]
    correct = np.array([[float(r.correct) for r in row] for row in rows])
    confidence = np.array([[math.nan if r.confidence is None else r.confidence for r in row] for row in rows])
    cost = np.array([[r.tokens * p for r, p in zip(row, prices)] for row in rows], dtype=float)
    return TierColumns(tuple(names or [s.split(":")[-1] if s.startswith("rlcr:") else s for s in specs]),
                       correct, confidence, cost)


@dataclass(frozen=True)
class Outcome:
    thresholds: tuple[float, ...]
    n: int
    accuracy: float
    cost: float  # mean per question
    last_only_cost: float  # the last tier alone
    cost_fraction: float  # cost / last_only_cost
    share: tuple[float, ...]  # of questions each tier answers
    reach: tuple[float, ...]  # of questions each tier runs on

    def as_dict(self) -> dict:
        return {"thresholds": list(self.thresholds), "n": self.n, "accuracy": self.accuracy, "cost": self.cost,
                "last_only_cost": self.last_only_cost, "cost_fraction": self.cost_fraction,
                "share": list(self.share), "reach": list(self.reach)}


def weights(cols: TierColumns, thresholds, tie_defer_prob: float = 0.0) -> np.ndarray:
    """P(tier k answers) per question, (n, N)."""
    policies = [TierPolicy(float(t), tie_defer_prob) for t in thresholds]
    return route_weights(cols.confidence[:, :-1], policies)


def simulate(cols: TierColumns, thresholds, tie_defer_prob: float = 0.0) -> Outcome:
    """The cascade's expected accuracy, cost and routing at these thresholds (one per tier but the last)."""
    if len(thresholds) != cols.n_tiers - 1:
        raise ValueError(f"give {cols.n_tiers - 1} thresholds for {cols.n_tiers} tiers, got {len(thresholds)}")
    w = weights(cols, thresholds, tie_defer_prob)
    reach = np.cumsum(w[:, ::-1], axis=1)[:, ::-1]  # P(tier k runs) = P(some tier >= k answers)
    cost = float(np.mean(np.sum(reach * cols.cost, axis=1)))
    last = float(np.mean(cols.cost[:, -1]))
    return Outcome(tuple(float(t) for t in thresholds), len(cols), float(np.mean(np.sum(w * cols.correct, axis=1))),
                   cost, last, cost / last if last > 0 else math.nan, tuple(w.mean(axis=0).tolist()),
                   tuple(reach.mean(axis=0).tolist()))


def grid(cols: TierColumns) -> list[list[float]]:
    """Each deciding tier's candidate thresholds: its distinct stated confidences."""
    out = []
    for k in range(cols.n_tiers - 1):
        conf = cols.confidence[:, k]
        values = sorted(set(np.round(conf[~np.isnan(conf)], 9).tolist())) or [0.0]
        out.append(values)
    return out


def sweep(cols: TierColumns) -> tuple[np.ndarray, np.ndarray, list[tuple[float, ...]]]:
    """(accuracy, cost fraction, thresholds) of every tuple on the grid; for each choice of the
    earlier thresholds the last deciding tier's candidates are computed at once (the same rule
    as simulate(), plain policies)."""
    axes = grid(cols)
    if math.prod(len(a) for a in axes) > MAX_GRID:
        raise ValueError(f"the threshold grid has over {MAX_GRID} tuples; round the confidences first")
    d = cols.n_tiers - 2  # the last tier that decides
    last_cost = float(np.mean(cols.cost[:, -1]))
    candidates = np.asarray(axes[-1])
    defer = weights_grid(cols.confidence[:, d], candidates)  # (n, T)
    acc, frac, tuples = [], [], []
    for head in itertools.product(*axes[:-1]):
        reach, right, cost = np.ones(len(cols)), np.zeros(len(cols)), np.zeros(len(cols))
        for k, t in enumerate(head):
            w = TierPolicy(float(t)).policy.weights(cols.confidence[:, k])
            cost += reach * cols.cost[:, k]
            right += reach * (1 - w) * cols.correct[:, k]
            reach = reach * w
        r = reach[:, None]
        total_right = right[:, None] + r * ((1 - defer) * cols.correct[:, d][:, None] + defer * cols.correct[:, -1][:, None])
        total_cost = cost[:, None] + r * cols.cost[:, d][:, None] + r * defer * cols.cost[:, -1][:, None]
        acc.extend(total_right.mean(axis=0).tolist())
        frac.extend((total_cost.mean(axis=0) / last_cost if last_cost > 0 else np.full(len(candidates), np.nan)).tolist())
        tuples.extend((*head, float(t)) for t in candidates)
    return np.array(acc), np.array(frac), tuples


def frontier(cols: TierColumns) -> list[Outcome]:
    """The accuracy-cost Pareto frontier over the grid, cheapest first, the last tier alone included."""
    acc, frac, tuples = sweep(cols)
    order = np.lexsort((-acc, frac))
    points, best = [], -1.0
    for i in order:
        if acc[i] > best + 1e-12:
            points.append(simulate(cols, tuples[i]))
            best = acc[i]
    last = _last_alone(cols)
    if last.accuracy > best + 1e-12:
        points.append(last)
    return points


def _last_alone(cols: TierColumns) -> Outcome:
    """The last tier alone (no thresholds: every earlier tier is skipped, not run)."""
    n = len(cols)
    share = tuple([0.0] * (cols.n_tiers - 1) + [1.0])
    c = float(np.mean(cols.cost[:, -1]))
    return Outcome((), n, float(np.mean(cols.correct[:, -1])), c, c, 1.0, share,
                   share)


def best_within(points: list[Outcome], budget: float) -> Outcome | None:
    """The most accurate frontier point costing at most `budget` (a fraction of the last tier alone)."""
    fits = [p for p in points if p.cost_fraction <= budget + 1e-12]
    return max(fits, key=lambda p: (p.accuracy, -p.cost)) if fits else None


class FitError(ValueError):
    """No threshold tuple meets the target on the calibration half; the message says what is reachable."""


@dataclass
class Fit:
    target: dict
    thresholds: tuple[float, ...]
    calibration: dict
    holdout: dict | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"method": "exhaustive grid over each tier's distinct confidences (plain thresholds), "
                          "chosen on the calibration half", "target": self.target, "thresholds": list(self.thresholds),
                "calibration": self.calibration, "holdout": self.holdout, "notes": self.notes}


def fit(cols: TierColumns, *, cost_budget: float | None = None, target_accuracy: float | None = None,
        holdout: TierColumns | None = None, seed: int = 0, bootstrap: int = 1000) -> Fit:
    """Joint thresholds on `cols` for one target; checked on `holdout` when given."""
    if (cost_budget is None) == (target_accuracy is None):
        raise FitError("give one target: a cost budget (fraction of the last tier alone) or a target accuracy")
    acc, frac, tuples = sweep(cols)
    if cost_budget is not None:
        ok = frac <= cost_budget + 1e-12
        if not ok.any():
            raise FitError(f"no thresholds cost at most {cost_budget:g} of the last tier alone; "
                           f"the cheapest costs {frac.min():.3f}")
        i = max(np.flatnonzero(ok), key=lambda j: (acc[j], -frac[j]))
        target = {"kind": "cost_budget", "value": cost_budget}
    else:
        ok = acc >= target_accuracy - 1e-12
        if not ok.any():
            raise FitError(f"no thresholds reach accuracy {target_accuracy:g}; the best reaches {acc.max():.3f}")
        i = min(np.flatnonzero(ok), key=lambda j: (frac[j], -acc[j]))
        target = {"kind": "target_accuracy", "value": target_accuracy}
    chosen = tuples[i]
    result = Fit(target, chosen, evaluate(cols, chosen, seed=seed, bootstrap=bootstrap))
    if holdout is not None and len(holdout):
        result.holdout = evaluate(holdout, chosen, seed=seed + 1, bootstrap=bootstrap)
        h = result.holdout
        if cost_budget is not None:
            h["target_met"] = bool(h["cost_fraction"] <= cost_budget + 1e-12)
            if bootstrap:
                h["target_in_95"] = bool(h["cost_fraction_95"][0] <= cost_budget)
        else:
            h["target_met"] = bool(h["accuracy"] >= target_accuracy - 1e-12)
            if bootstrap:
                h["target_in_95"] = bool(h["accuracy_95"][1] >= target_accuracy)
    return result


def evaluate(cols: TierColumns, thresholds, *, seed: int = 0, bootstrap: int = 1000) -> dict:
    """simulate() with 95% bootstrap intervals of accuracy and cost fraction (questions resampled)."""
    out = simulate(cols, thresholds).as_dict()
    rng = np.random.default_rng(seed)
    w = weights(cols, thresholds)
    reach = np.cumsum(w[:, ::-1], axis=1)[:, ::-1]
    right, cost, last = np.sum(w * cols.correct, axis=1), np.sum(reach * cols.cost, axis=1), cols.cost[:, -1]
    accs, fracs = [], []
    for _ in range(bootstrap):
        i = rng.integers(0, len(cols), len(cols))
        accs.append(right[i].mean())
        fracs.append(cost[i].mean() / last[i].mean() if last[i].mean() > 0 else math.nan)
    if bootstrap:
        out["accuracy_95"] = [float(np.quantile(accs, 0.025)), float(np.quantile(accs, 0.975))]
        out["cost_fraction_95"] = [float(np.nanquantile(fracs, 0.025)), float(np.nanquantile(fracs, 0.975))]
    out["tier_accuracy"] = cols.correct.mean(axis=0).tolist()
    return out
