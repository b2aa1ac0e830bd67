"""summarize(): mean, sd (ddof=1), n and the NaN / inf counts that are never averaged away."""

import math

import numpy as np
import pytest

from fewshot_da.metrics import summarize


def test_summarize_matches_numpy_and_counts_non_finite():
    values = [0.91, 0.85, math.nan, 0.78, math.inf, None, 0.88]
    s = summarize(values)
    finite = np.array([0.91, 0.85, 0.78, 0.88])
    assert s["n"] == 4 and s["n_nan"] == 2 and s["n_inf"] == 1
    assert s["mean"] == pytest.approx(finite.mean(), abs=1e-15)
    assert s["sd"] == pytest.approx(finite.std(ddof=1), abs=1e-15)


def test_summarize_small_inputs():
    assert summarize([]) == {"mean": None, "sd": None, "n": 0, "n_nan": 0, "n_inf": 0}
    assert summarize([2.5]) == {"mean": 2.5, "sd": None, "n": 1, "n_nan": 0, "n_inf": 0}
    assert summarize([-math.inf, math.nan]) == {"mean": None, "sd": None, "n": 0, "n_nan": 1, "n_inf": 1}
    assert summarize(iter([1.0, 3.0]))["sd"] == pytest.approx(math.sqrt(2.0))
