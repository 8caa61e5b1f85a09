"""benchmarks/training/measurement_floor.py: the noise floor of ECE / AUROC for exact confidences."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks" / "training"))

from measurement_floor import floor  # noqa: E402


def test_exact_confidences_measure_noise_that_shrinks_with_n():
    conf = np.random.default_rng(1).random(120)
    small, large = floor(conf, 300, seed=0), floor(np.tile(conf, 20), 100, seed=0)
    # ECE's population value is 0: at n = 120 it reads several hundredths, 20x the data reads less
    assert small["ece"].mean() > 0.04 and large["ece"].mean() < small["ece"].mean() / 3
    # uniform exact confidences rank at 0.833 in expectation (AUROC of p against Bernoulli(p))
    assert abs(large["auroc"].mean() - 5 / 6) < 0.01
    # a confidence that says nothing ranks at chance, whatever the draws
    assert np.all(floor(np.full(50, 0.5), 20, seed=0)["auroc"] == 0.5)
