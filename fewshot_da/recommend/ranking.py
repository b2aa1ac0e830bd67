"""Rank candidate strategies by their validation scores (one value per fold, seeds averaged), with intervals
and how sure the top choice is."""
from __future__ import annotations

import numpy as np

from ..reports.gap import sign_test
from ..reports.stats import t_interval

HIGH, MODERATE = 0.9, 0.6  # P(best) thresholds of the confidence words


def probability_best(scores: dict, n_resamples: int = 4000, seed: int = 0) -> dict:
    """{candidate: share of fold bootstrap resamples (folds drawn with replacement, the same folds for every
    candidate) in which it has the highest mean}; ties share the win; resamples of unscored folds only are
    left out."""
    names = list(scores)
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


def rank_candidates(scores: dict, confidence: float = 0.95, seed: int = 0) -> list:
    """Rows {rank, candidate, mean, low, high, n_folds, p_best, folds_won_vs_best, sign_p_vs_best}, best first;
    `scores` = {candidate: [per-fold score]} with the same folds in the same order for every candidate."""
    p_best = probability_best(scores, seed=seed)
    def key(name):
        finite = np.asarray(scores[name], dtype=float)
        finite = finite[np.isfinite(finite)]
        return (-finite.mean() if finite.size else np.inf, name)

    order = sorted(scores, key=key)
    best = np.asarray(scores[order[0]], dtype=float)
    rows = []
    for rank, name in enumerate(order, 1):
        values = np.asarray(scores[name], dtype=float)
        ci = t_interval(values, confidence)
        rows.append({"rank": rank, "candidate": name, "mean": ci.mean, "low": ci.low, "high": ci.high,
                     "n_folds": ci.n, "p_best": p_best[name],
                     "folds_won_vs_best": int(np.sum(values > best)) if rank > 1 else None,
                     "sign_p_vs_best": sign_test(values, best) if rank > 1 else None})
    return rows


def decide(rows: list, scores: dict, confidence: float = 0.95) -> dict:
    """The recommendation: the top candidate, its P(best), the paired interval of its margin over the runner-up,
    a confidence word (high: P(best) >= 0.9 and the margin's interval above 0; moderate: P(best) >= 0.6; else
    low) and the candidates statistically tied with it (paired margin interval containing 0)."""
    best = rows[0]["candidate"]
    top = np.asarray(scores[best], dtype=float)
    tied, margin = [], None
    for row in rows[1:]:
        diff = t_interval(top - np.asarray(scores[row["candidate"]], dtype=float), confidence)
        if margin is None:
            margin = diff
        if not (diff.low > 0):
            tied.append(row["candidate"])
    p = rows[0]["p_best"]
    sure = margin is None or (margin.low > 0)
    level = "high" if p >= HIGH and sure else "moderate" if p >= MODERATE else "low"
    return {"strategy": best, "p_best": p, "confidence": level,
            "runner_up": rows[1]["candidate"] if len(rows) > 1 else None,
            "margin": None if margin is None else {"mean": margin.mean, "low": margin.low, "high": margin.high},
            "tied_with": tied}
