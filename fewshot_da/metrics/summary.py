"""One aggregation for per-case scores: mean, sd (ddof=1), n, and counts of NaN and inf, never averaged away."""

from __future__ import annotations

import math
from collections.abc import Iterable


def summarize(values: Iterable[float]) -> dict:
    """{'mean', 'sd', 'n', 'n_nan', 'n_inf'} of the finite values.

    mean is None when no value is finite, sd (sample, ddof=1) when fewer than two are; n counts the finite
    values, n_nan / n_inf the others (None counts as NaN), so nothing is dropped silently.
    """
    finite: list[float] = []
    n_nan = n_inf = 0
    for value in values:
        v = math.nan if value is None else float(value)
        if math.isnan(v):
            n_nan += 1
        elif math.isinf(v):
            n_inf += 1
        else:
            finite.append(v)
    n = len(finite)
    mean = math.fsum(finite) / n if n else None
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / (n - 1)) if n > 1 else None
    return {"mean": mean, "sd": sd, "n": n, "n_nan": n_nan, "n_inf": n_inf}
