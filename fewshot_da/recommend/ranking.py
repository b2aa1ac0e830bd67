"""Rank candidate strategies by their validation scores (one value per fold, seeds averaged), with intervals
that stay inside the metric's range, and how sure the top choice is, saying so when the folds are too few."""
from __future__ import annotations

import numpy as np

from ..reports.gap import sign_test
from ..reports.stats import Interval, t_interval

HIGH, MODERATE = 0.9, 0.6  # P(best) thresholds of the confidence words
MIN_FOLDS_P_BEST = 3  # a fold bootstrap over fewer scored folds says 1.00 whenever one candidate wins them all


def metric_range(metric: str | None) -> tuple:
    """(low, high) of a validation metric: Dice and surface Dice in [0, 1], ARI in [-1, 1]; unknown: unbounded."""
    if metric is None:
        return (-np.inf, np.inf)
    if metric == "ari":
        return (-1.0, 1.0)
    return (0.0, 1.0)


def bounded_interval(values, confidence: float = 0.95, bounds: tuple = (-np.inf, np.inf)) -> Interval:
    """The Student-t interval of the mean of the finite `values`, clipped to `bounds` (the metric's range), so an
    interval over 2-3 folds never claims a score the metric cannot take."""
    ci = t_interval(values, confidence)
    low, high = bounds
    clip = lambda v: v if not np.isfinite(v) else float(min(max(v, low), high))  # noqa: E731
    return Interval(ci.mean, clip(ci.low), clip(ci.high), ci.n)


def scored_folds(scores: dict) -> int:
    """How many folds at least one candidate has a finite score on (a fold nobody scored is no evidence)."""
    matrix = np.array(list(scores.values()), dtype=float)
    return int(np.isfinite(matrix).any(axis=0).sum()) if matrix.size else 0


def nan_folds(scores: dict) -> dict:
    """{candidate: folds it has no score on, among the folds another candidate was scored on}, only those with
    any: a partly unscored candidate's mean rests on fewer folds than the others'."""
    matrix = np.array(list(scores.values()), dtype=float)
    scored = np.isfinite(matrix).any(axis=0)
    return {name: int(np.sum(~np.isfinite(row) & scored)) for name, row in zip(scores, matrix)
            if np.any(~np.isfinite(row) & scored)}


def probability_best(scores: dict, n_resamples: int = 4000, seed: int = 0) -> dict:
    """{candidate: share of fold bootstrap resamples (folds drawn with replacement, the same folds for every
    candidate) in which it has the highest mean}; ties share the win; resamples of unscored folds only are
    left out. None for every candidate when fewer than MIN_FOLDS_P_BEST folds are scored: over 2 folds a
    candidate that wins both gets 1.00 from every resample, which says nothing about a third."""
    names = list(scores)
    if scored_folds(scores) < MIN_FOLDS_P_BEST:
        return {n: None for n in names}
    matrix = np.array([scores[n] for n in names], dtype=float)  # candidates x folds
    n_folds = matrix.shape[1]
    picks = np.random.default_rng(seed).integers(0, n_folds, size=(n_resamples, n_folds))
    drawn = matrix[:, picks]
    counts = np.isfinite(drawn).sum(axis=2)
    means = np.where(counts > 0, np.nansum(drawn, axis=2) / np.maximum(counts, 1), -np.inf)  # cand. x resamples
    top = (means == means.max(axis=0, keepdims=True)) & np.isfinite(means)
    n_top = top.sum(axis=0)
    valid = n_top > 0  # resamples that drew at least one scored fold
    if not valid.any():
        return {n: 0.0 for n in names}
    share = (top[:, valid] / n_top[valid]).mean(axis=1)
    return {n: float(s) for n, s in zip(names, share)}


def rank_candidates(scores: dict, confidence: float = 0.95, seed: int = 0, metric: str | None = None) -> list:
    """Rows {rank, candidate, mean, low, high, n_folds, n_nan, p_best, folds_won_vs_best, sign_p_vs_best}, best
    first; `scores` = {candidate: [per-fold score]} with the same folds in the same order for every candidate;
    intervals are clipped to the range of `metric` (see metric_range); p_best is None under 3 scored folds."""
    p_best = probability_best(scores, seed=seed)
    bounds = metric_range(metric)
    missing = nan_folds(scores)

    def key(name):
        finite = np.asarray(scores[name], dtype=float)
        finite = finite[np.isfinite(finite)]
        return (-finite.mean() if finite.size else np.inf, name)

    order = sorted(scores, key=key)
    best = np.asarray(scores[order[0]], dtype=float)
    rows = []
    for rank, name in enumerate(order, 1):
        values = np.asarray(scores[name], dtype=float)
        ci = bounded_interval(values, confidence, bounds)
        rows.append({"rank": rank, "candidate": name, "mean": ci.mean, "low": ci.low, "high": ci.high,
                     "n_folds": ci.n, "n_nan": missing.get(name, 0), "p_best": p_best[name],
                     "folds_won_vs_best": int(np.sum(values > best)) if rank > 1 else None,
                     "sign_p_vs_best": sign_test(values, best) if rank > 1 else None})
    return rows


def decide(rows: list, scores: dict, confidence: float = 0.95, metric: str | None = None) -> dict:
    """The recommendation: the top candidate, its P(best), the paired interval of its margin over the runner-up
    and the candidates statistically tied with it (paired margin interval over the folds both scored reaching
    0, or fewer than 2 such folds), and a confidence word:
    - high: P(best) >= 0.9, nobody tied, every candidate scored on every fold;
    - moderate: P(best) >= 0.6 (with fewer than 3 scored folds, where P(best) is not estimated: the top beats
      every other candidate on every fold);
    - low: otherwise.
    `notes` says in words what capped it (too few folds, partly unscored candidates)."""
    best = rows[0]["candidate"]
    top = np.asarray(scores[best], dtype=float)
    low, high = metric_range(metric)
    span = (low - high, high - low)
    tied, margin = [], None
    for row in rows[1:]:
        other = np.asarray(scores[row["candidate"]], dtype=float)
        diff = bounded_interval(top - other, confidence, span)
        if margin is None:
            margin = diff
        if np.isfinite(other).any() and (diff.n < 2 or not (diff.low > 0)):
            tied.append(row["candidate"])
    n_folds = scored_folds(scores)
    n_total = len(top)
    missing = nan_folds(scores)
    p = rows[0]["p_best"]
    notes = []
    if p is None:
        others = [np.asarray(scores[r["candidate"]], dtype=float) for r in rows[1:]]
        both = [np.isfinite(top) & np.isfinite(o) for o in others]
        sweeps = all(b.any() and np.all(top[b] > o[b]) for o, b in zip(others, both))
        level = "moderate" if sweeps else "low"
        notes.append(f"{n_folds} scored fold{'' if n_folds == 1 else 's'}: too few for P(best) or high confidence "
                     f"(needs {MIN_FOLDS_P_BEST})")
    else:
        level = "high" if p >= HIGH else "moderate" if p >= MODERATE else "low"
        if level == "high" and tied:
            level = "moderate"
            notes.append(f"not high: statistically tied with {', '.join(tied)}")
    if n_folds < n_total:
        if level == "high":
            level = "moderate"
        notes.append(f"{n_total - n_folds} of {n_total} folds scored by no candidate (NaN)")
    if missing:
        if level == "high":
            level = "moderate"
        notes.append("partly unscored (NaN folds): " + ", ".join(f"{n} ({k} of {n_folds} folds)"
                                                                 for n, k in missing.items()))
    return {"strategy": best, "p_best": p, "confidence": level,
            "runner_up": rows[1]["candidate"] if len(rows) > 1 else None,
            "margin": None if margin is None else {"mean": margin.mean, "low": margin.low, "high": margin.high},
            "tied_with": tied, "n_scored_folds": n_folds, "nan_folds": missing, "notes": notes}
