"""A confidence calibrator: stated confidence -> probability of being right, fitted on records.

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
class IsotonicCalibrator:
    """Knots of a monotone map [0, 1] -> [0, 1]; `source` names the confidence it reads
    ("expected" or "sampled"), `n` the samples it was fitted on."""

    x: tuple[float, ...]
    y: tuple[float, ...]
    source: str = "expected"
    n: int = 0
    fitted_on: str = ""

    @classmethod
    def fit(cls, confidence, correct, *, source: str = "expected", fitted_on: str = "") -> "IsotonicCalibrator":
        """Fit on per-sample confidences (NaN = none stated, skipped) and 1/0 correctness."""
        from sklearn.isotonic import IsotonicRegression

        conf = np.asarray(confidence, dtype=float)
        corr = np.asarray(correct, dtype=float)
        if conf.shape != corr.shape or conf.ndim != 1:
            raise CalibratorError(f"confidence and correct must be 1-d and the same length, got {conf.shape} and {corr.shape}")
        stated = ~np.isnan(conf)
        if stated.sum() < 2:
            raise CalibratorError(f"a calibrator needs at least 2 samples with a confidence, got {int(stated.sum())}")
        model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        model.fit(conf[stated], corr[stated])
        return cls(tuple(map(float, model.X_thresholds_)), tuple(map(float, model.y_thresholds_)),
                   source, int(stated.sum()), fitted_on)

    def apply(self, confidence) -> np.ndarray:
        """Calibrated confidences, same shape; NaN stays NaN (no confidence stated)."""
        conf = np.asarray(confidence, dtype=float)
        return np.where(np.isnan(conf), np.nan, np.interp(conf, self.x, self.y))

    def as_dict(self) -> dict:
        return {"format": FORMAT, "kind": "isotonic", **asdict(self), "x": list(self.x), "y": list(self.y)}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.as_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "IsotonicCalibrator":
        """Read a file written by `save`; CalibratorError names what is wrong."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise CalibratorError(f"cannot read calibrator {path}: {err}") from None
        try:
            return cls.from_dict(data)
        except CalibratorError as err:
            raise CalibratorError(f"{path}: {err}") from None

    @classmethod
    def from_dict(cls, data) -> "IsotonicCalibrator":
        """The calibrator `as_dict` describes; CalibratorError when it is not one."""
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("kind") != "isotonic":
            raise CalibratorError(f"not a {FORMAT} isotonic calibrator")
        x, y = data.get("x"), data.get("y")
        if not (isinstance(x, list) and isinstance(y, list) and len(x) == len(y) >= 1):
            raise CalibratorError("x and y must be lists of the same non-zero length")
        xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        if np.any(np.diff(xs) < 0) or np.any(np.diff(ys) < 0) or np.any((ys < 0) | (ys > 1)):
            raise CalibratorError("knots must be non-decreasing with y in [0, 1]")
        return cls(tuple(map(float, xs)), tuple(map(float, ys)), str(data.get("source", "expected")),
                   int(data.get("n", 0)), str(data.get("fitted_on", "")))
