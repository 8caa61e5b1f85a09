"""A confidence calibrator: stated confidence -> probability of being right, fitted on records.

Four fits (KINDS), all with scikit-learn, all stored the same way (monotone knots):
isotonic (below); platt (logistic regression on logit(confidence), tabulated on a grid);
temperature (the same with no intercept: sigmoid(logit(c) / T)); histogram (accuracy per
equal-width bin, pooled where adjacent bins reverse, so the map stays monotone).

Isotonic regression (scikit-learn's `IsotonicRegression`, pool-adjacent-violators) fits the
monotone map that best predicts correctness from the stated confidence on an in-domain set. It
keeps the order of confidences (so AUROC can only tie values, never reorder them) and fixes the
level: a model that says 0.9 and is right 40% of the time is mapped to 0.4.

The fitted map is a list of knots; between knots it is linear and outside them it is clipped, which
is what `IsotonicRegression.predict` does with out_of_bounds="clip". `apply` evaluates the knots
with numpy, so a saved calibrator (JSON, see `save`) can be served without scikit-learn.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

FORMAT = "corea.calibrator/1"


class CalibratorError(ValueError):
    """Data that cannot fit a calibrator, or a file that is not one; the message says which."""


@dataclass(frozen=True)
class Calibrator:
    """Knots of a monotone map [0, 1] -> [0, 1]; `source` names the confidence it reads
    ("expected" or "sampled"), `n` the samples it was fitted on, `kind` the fit (KINDS);
    `model` and `contract` the SLM and output contract it was fitted for ("" = not stated)."""

    x: tuple[float, ...]
    y: tuple[float, ...]
    source: str = "expected"
    n: int = 0
    fitted_on: str = ""
    kind: str = "isotonic"
    model: str = ""
    contract: str = ""

    @classmethod
    def fit(cls, confidence, correct, *, kind: str = "isotonic", source: str = "expected", fitted_on: str = "",
            model: str = "", contract: str = "") -> "Calibrator":
        """Fit on per-sample confidences (NaN = none stated, skipped) and 1/0 correctness."""
        if kind not in KINDS:
            raise CalibratorError(f"unknown calibrator kind {kind!r}; choose one of {', '.join(KINDS)}")
        conf = np.asarray(confidence, dtype=float)
        corr = np.asarray(correct, dtype=float)
        if conf.shape != corr.shape or conf.ndim != 1:
            raise CalibratorError(f"confidence and correct must be 1-d and the same length, got {conf.shape} and {corr.shape}")
        stated = ~np.isnan(conf)
        if stated.sum() < 2:
            raise CalibratorError(f"a calibrator needs at least 2 samples with a confidence, got {int(stated.sum())}")
        x, y = _FITS[kind](conf[stated], corr[stated])
        return cls(tuple(map(float, x)), tuple(map(float, y)), source, int(stated.sum()), fitted_on, kind, model, contract)

    def check_serves(self, *, model: str, contract: str, source: str) -> None:
        """CalibratorError when this calibrator was fitted for another model, contract or source."""
        for name, want, have in (("model", model, self.model), ("contract", contract, self.contract),
                                 ("confidence source", source, self.source)):
            if have and have != want:
                raise CalibratorError(f"calibrator was fitted for {name} {have!r}, the server runs {want!r}")

    def apply(self, confidence) -> np.ndarray:
        """Calibrated confidences, same shape; NaN stays NaN (no confidence stated)."""
        conf = np.asarray(confidence, dtype=float)
        return np.where(np.isnan(conf), np.nan, np.interp(conf, self.x, self.y))

    def as_dict(self) -> dict:
        return {"format": FORMAT, **asdict(self), "x": list(self.x), "y": list(self.y)}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.as_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Calibrator":
        """Read a file written by `save`; CalibratorError names what is wrong."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise CalibratorError(f"cannot read {path}: {err}") from None
        try:
            return cls.from_dict(data)
        except CalibratorError as err:
            raise CalibratorError(f"{path}: {err}") from None

    @classmethod
    def from_dict(cls, data) -> "Calibrator":
        """The calibrator `as_dict` describes; CalibratorError when it is not one."""
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("kind") not in KINDS:
            raise CalibratorError(f"not a {FORMAT} calibrator (format {FORMAT}, kind one of {', '.join(KINDS)})")
        x, y = data.get("x"), data.get("y")
        if not (isinstance(x, list) and isinstance(y, list) and len(x) == len(y) >= 1):
            raise CalibratorError("x and y must be lists of the same non-zero length")
        xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        if np.any(np.diff(xs) < 0) or np.any(np.diff(ys) < 0) or np.any((ys < 0) | (ys > 1)):
            raise CalibratorError("knots must be non-decreasing with y in [0, 1]")
        return cls(tuple(map(float, xs)), tuple(map(float, ys)), str(data.get("source", "expected")),
                   int(data.get("n", 0)), str(data.get("fitted_on", "")), data["kind"],
                   str(data.get("model", "")), str(data.get("contract", "")))


IsotonicCalibrator = Calibrator  # the name before the other fits existed

_GRID = np.linspace(0.0, 1.0, 201)  # where the parametric maps are tabulated


def _logit(c):
    c = np.clip(np.asarray(c, dtype=float), 1e-4, 1 - 1e-4)
    return np.log(c / (1 - c))


def _fit_isotonic(conf, corr):
    from sklearn.isotonic import IsotonicRegression

    model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(conf, corr)
    return model.X_thresholds_, model.y_thresholds_


def _fit_logistic(conf, corr, intercept: bool):
    from sklearn.linear_model import LogisticRegression

    if len(set(corr.tolist())) < 2:
        raise CalibratorError("a platt or temperature fit needs both right and wrong answers")
    model = LogisticRegression(C=1e6, fit_intercept=intercept).fit(_logit(conf)[:, None], corr.astype(int))
    slope = float(model.coef_[0, 0])
    if slope <= 0:
        raise CalibratorError(f"the fitted slope is {slope:.3g}: this confidence does not rank right above wrong")
    z = slope * _logit(_GRID) + (float(model.intercept_[0]) if intercept else 0.0)
    return _GRID, 1.0 / (1.0 + np.exp(-z))


def _fit_histogram(conf, corr, n_bins: int = 10):
    from sklearn.isotonic import IsotonicRegression

    index = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    used = [b for b in range(n_bins) if np.any(index == b)]
    centres = np.array([conf[index == b].mean() for b in used])
    accuracy = np.array([corr[index == b].mean() for b in used])
    counts = np.array([np.sum(index == b) for b in used], dtype=float)
    pooled = IsotonicRegression(y_min=0.0, y_max=1.0).fit_transform(centres, accuracy, sample_weight=counts)
    return centres, pooled


_FITS = {
    "isotonic": _fit_isotonic,
    "platt": lambda c, y: _fit_logistic(c, y, intercept=True),
    "temperature": lambda c, y: _fit_logistic(c, y, intercept=False),
    "histogram": _fit_histogram,
}
KINDS = tuple(_FITS)
