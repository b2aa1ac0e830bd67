"""Score against labelled-data size: a saturating power law s(x) = a - b * x^-c fitted to validation points
(x in labelled slices), its forecast, the size that reaches a target score, and fold-bootstrap intervals."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Curve:
    """s(x) = a - b * x**-c (kind 'power'); 'log': s = a + b ln x (two sizes); 'flat': s = a (one size)."""

    kind: str
    a: float
    b: float
    c: float

    def __call__(self, x):
        x = np.asarray(x, dtype=float)
        if self.kind == "power":
            return self.a - self.b * x ** -self.c
        if self.kind == "log":
            return np.minimum(self.a + self.b * np.log(x), 1.0)
        return np.full_like(x, self.a)

    def size_for(self, score: float) -> float:
        """Smallest x with s(x) >= score (inf if the curve never reaches it; its asymptote is below)."""
        if self.kind == "power":
            if score >= self.a:
                return math.inf
            if self.b <= 0:
                return 0.0
            return float((self.b / (self.a - score)) ** (1.0 / self.c))
        if self.kind == "log":
            if self.b <= 0 or score > 1.0:
                return math.inf if score > self.a else 0.0
            return float(math.exp((score - self.a) / self.b))
        return 0.0 if score <= self.a else math.inf


def fit_curve(x, y, *, ceiling: float = 1.0) -> Curve:
    """Least-squares fit of the points (x > 0 slices, y score <= ceiling): power law with a in [max y, ceiling],
    b >= 0, c in [0.05, 3] when there are 3+ distinct sizes; fewer sizes fall back to 'log' or 'flat'."""
    from scipy.optimize import curve_fit

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0)
    x, y = x[keep], y[keep]
    sizes = np.unique(x)
    if sizes.size == 0:
        return Curve("flat", float("nan"), 0.0, 0.0)
    if sizes.size == 1:
        return Curve("flat", float(y.mean()), 0.0, 0.0)
    if sizes.size == 2:
        b, a = np.polyfit(np.log(x), y, 1)
        return Curve("log", float(a), float(max(b, 0.0)), 0.0)
    top = float(min(max(y.max(), y.mean()), ceiling))
    start = (min(top + 0.05, ceiling), max(top - y.min(), 1e-3) * sizes[0] ** 0.5, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            params, _ = curve_fit(lambda t, a, b, c: a - b * t ** -c, x, y, p0=start,
                                  bounds=([y.min(), 0.0, 0.05], [ceiling, np.inf, 3.0]), maxfev=20000)
        except (RuntimeError, ValueError):
            b, a = np.polyfit(np.log(x), y, 1)
            return Curve("log", float(a), float(max(b, 0.0)), 0.0)
    return Curve("power", *(float(p) for p in params))


def bootstrap(points_by_fold: list, at: list, *, target: float | None = None, n_resamples: int = 200,
              seed: int = 0, confidence: float = 0.95) -> dict:
    """Refit on folds drawn with replacement: {'forecast': [(x, low, high)], 'size_for': (low, high) or None}
    (percentile intervals over resamples; `points_by_fold` = [[(x, y), ...] per fold])."""
    rng = np.random.default_rng(seed)
    forecasts, sizes = [], []
    for _ in range(n_resamples):
        drawn = [points_by_fold[i] for i in rng.integers(0, len(points_by_fold), len(points_by_fold))]
        xs = [p[0] for fold in drawn for p in fold]
        ys = [p[1] for fold in drawn for p in fold]
        curve = fit_curve(xs, ys)
        forecasts.append(curve(at))
        if target is not None:
            sizes.append(curve.size_for(target))
    q = ((1 - confidence) / 2, (1 + confidence) / 2)
    f = np.asarray(forecasts, dtype=float)
    out = {"forecast": [(float(x), *map(float, np.nanquantile(f[:, i], q))) for i, x in enumerate(at)],
           "size_for": None}
    if target is not None:
        out["size_for"] = tuple(float(v) for v in np.quantile(np.asarray(sizes, dtype=float), q,
                                                              method="inverted_cdf"))
    return out
