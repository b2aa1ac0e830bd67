"""The one aggregate of per-case values: mean, sd (ddof=1), n, n_nan — for run summaries, eval and tables."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def summarize(values: Sequence[float]) -> dict:
    """{'mean', 'sd', 'n', 'n_nan'} over the finite values; NaN/inf are counted in n_nan, never hidden.

    mean is NaN when no value is finite; sd (sample, ddof=1) is NaN with fewer than two finite values.
    """
    v = np.asarray([float("nan") if x is None else x for x in values], dtype=float)
    finite = v[np.isfinite(v)]
    return {
        "mean": float(finite.mean()) if finite.size else math.nan,
        "sd": float(finite.std(ddof=1)) if finite.size > 1 else math.nan,
        "n": int(v.size),
        "n_nan": int(v.size - finite.size),
    }
