"""Score against labelled-data size: a saturating power law s(x) = a - b * x^-c fitted to validation points
(x in labelled slices), its forecast, the size that reaches a target score, and fold-bootstrap intervals that
widen beyond the measured sizes when the fit sits at a bound of its parameters."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Curve:
    """s(x) = a - b * x**-c (kind 'power'); 'log': s = a + b ln x (two sizes); 'flat': s = a (one size).
    `at_bound` names the parameters the fit left at a bound of its range (there the bound, not the data,
    decides the extrapolation)."""

    kind: str
    a: float
    b: float
    c: float
    at_bound: tuple = field(default=(), compare=False)

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
        return _log_fit(x, y)
    top = float(min(max(y.max(), y.mean()), ceiling))
    start = (min(top + 0.05, ceiling), max(top - y.min(), 1e-3) * sizes[0] ** 0.5, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            params, _ = curve_fit(lambda t, a, b, c: a - b * t ** -c, x, y, p0=start,
                                  bounds=([y.min(), 0.0, 0.05], [ceiling, np.inf, 3.0]), maxfev=20000)
        except (RuntimeError, ValueError):
            return _log_fit(x, y)
    a, b, c = (float(p) for p in params)
    tol = 1e-6 * max(1.0, abs(ceiling))
    hit = tuple(name for name, on in (("a", a <= y.min() + tol or a >= ceiling - tol), ("b", b <= tol),
                                      ("c", c <= 0.05 + 1e-6 or c >= 3.0 - 1e-6)) if on)
    return Curve("power", a, b, c, hit)


def _log_fit(x, y) -> Curve:
    """s = a + b ln x by least squares, b >= 0 (a falling slope is clipped to flat: at_bound 'b')."""
    b, a = np.polyfit(np.log(x), y, 1)
    return Curve("log", float(a), float(max(b, 0.0)), 0.0, ("b",) if b < 0 else ())


def bootstrap(points_by_fold: list, at: list, *, target: float | None = None, n_resamples: int = 200,
              seed: int = 0, confidence: float = 0.95, ceiling: float = 1.0) -> dict:
    """Refit on folds drawn with replacement: {'forecast': [(x, low, high)], 'size_for': (low, high) or None,
    'at_bound': the parameters the fit on all points left at a bound, 'widened': [bool per x]} (percentile
    intervals over resamples; `points_by_fold` = [[(x, y), ...] per fold]).

    When the fit on all points sits at a bound of its parameters, the bounded power law's extrapolation is set by
    the bound, and its resamples agree because they hit the same bound. Beyond the largest measured size the band
    then also covers the two shapes on either side: no gain beyond the largest measured size (the band there) and
    continued log-linear growth s = a + b ln x (its own fold bootstrap, capped at `ceiling`)."""
    rng = np.random.default_rng(seed)
    all_x = [p[0] for fold in points_by_fold for p in fold]
    point = fit_curve(all_x, [p[1] for fold in points_by_fold for p in fold], ceiling=ceiling)
    largest = max((x for x in all_x if np.isfinite(x)), default=math.nan)
    at_all = list(at) + [largest]
    forecasts, sizes, logs = [], [], []
    for _ in range(n_resamples):
        drawn = [points_by_fold[i] for i in rng.integers(0, len(points_by_fold), len(points_by_fold))]
        xs = np.asarray([p[0] for fold in drawn for p in fold], dtype=float)
        ys = np.asarray([p[1] for fold in drawn for p in fold], dtype=float)
        curve = fit_curve(xs, ys, ceiling=ceiling)
        forecasts.append(curve(at_all))
        if target is not None:
            sizes.append(curve.size_for(target))
        keep = np.isfinite(xs) & np.isfinite(ys) & (xs > 0)
        if point.at_bound and np.unique(xs[keep]).size >= 2:
            logs.append(np.minimum(_log_fit(xs[keep], ys[keep])(np.asarray(at, dtype=float)), ceiling))
    q = ((1 - confidence) / 2, (1 + confidence) / 2)
    f = np.asarray(forecasts, dtype=float)
    band = [tuple(map(float, np.nanquantile(f[:, i], q))) for i in range(len(at_all))]
    widened = [bool(point.at_bound) and bool(logs) and x > largest for x in at]
    if any(widened):
        flat_low, flat_high = band[-1]
        log_band = np.nanquantile(np.asarray(logs, dtype=float), q, axis=0)
        for i, wide in enumerate(widened):
            if wide:
                band[i] = (min(band[i][0], flat_low, float(log_band[0, i])),
                           max(band[i][1], flat_high, float(log_band[1, i])))
    out = {"forecast": [(float(x), *band[i]) for i, x in enumerate(at)], "size_for": None,
           "at_bound": list(point.at_bound), "widened": widened}
    if target is not None:
        out["size_for"] = tuple(float(v) for v in np.quantile(np.asarray(sizes, dtype=float), q,
                                                              method="inverted_cdf"))
    return out
