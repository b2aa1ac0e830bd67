"""Study statistics: confidence intervals of mean D_R, winner counts with the sign test, Wilcoxon and TOST.

Methods, as the papers used them (REFERENCE §5):
- winners (Zakazov et al. 2021, Fig. 3): per budget and pair, the method with the highest pair-level D_R wins;
  the win is significant when the two-sided sign test on the scan-level D_R differences against the runner-up
  has p < alpha (0.1 there, 0.05 in the SpotTUnet paper);
- SpotTUnet vs the better of fine-tuning all / first layers (Zakazov et al. 2021, DSA notebook
  `spottune_performance`): one-sided Wilcoxon signed-rank on per-pair mean scores (alternative: SpotTUnet is
  greater), and where that is not significant, TOST equivalence (Schuirmann 1987; statsmodels' `ttost_ind`,
  pooled variance) with margin +-0.25 x the mean of the two samples' standard deviations.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ..data.budgets import budget_scans
from .gap import BASELINE, ORACLE, PairGap, RunGap, method_label, sign_test

NO_WINNER = "no winner"


@dataclass(frozen=True)
class Interval:
    """A mean with its confidence interval over `n` values ([low, high]; NaN when n < 2)."""

    mean: float
    low: float
    high: float
    n: int


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Student-t interval of the mean of the finite `values`: mean +- t_{(1+c)/2, n-1} * sd / sqrt(n)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    mean = float(v.mean())
    if v.size < 2:
        return Interval(mean, float("nan"), float("nan"), 1)
    half = float(stats.t.ppf((1 + confidence) / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return Interval(mean, mean - half, mean + half, int(v.size))


def cluster_bootstrap_interval(groups: Sequence[Sequence[float]], confidence: float = 0.95,
                               n_resamples: int = 10000, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of the mean of group means: groups (pairs) are resampled with replacement,
    then values (seeds) within each drawn group; seeded, so the interval is reproducible."""
    groups = [np.asarray(g, dtype=float)[np.isfinite(np.asarray(g, dtype=float))] for g in groups]
    groups = [g for g in groups if g.size]
    if not groups:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    mean = float(np.mean([g.mean() for g in groups]))
    if len(groups) < 2:
        return Interval(mean, float("nan"), float("nan"), 1)
    rng = np.random.default_rng(seed)
    sizes = np.array([g.size for g in groups])
    padded = np.zeros((len(groups), sizes.max()))
    for i, g in enumerate(groups):
        padded[i, :g.size] = g
    picks = rng.integers(0, len(groups), size=(n_resamples, len(groups)))
    n = sizes[picks][..., None]
    draws = np.minimum((rng.random((n_resamples, len(groups), sizes.max())) * n).astype(int), n - 1)
    used = np.arange(sizes.max()) < n
    group_means = (padded[picks[..., None], draws] * used).sum(axis=-1) / n[..., 0]
    means = group_means.mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Interval(mean, float(low), float(high), len(groups))


def gap_by_budget(gaps: Sequence[RunGap], ci: str = "t", confidence: float = 0.95, seed: int = 0) -> list:
    """Mean pair-level D_R per (arch, method, budget) with a `confidence` interval over pairs and seeds.

    ci='t': replicates (seeds x folds) are averaged within each pair, then a Student-t interval over the pair
    means (pairs are the independent units; seeds of a pair share its source model and scans).
    ci='bootstrap': `cluster_bootstrap_interval` (pairs, then seeds within pairs; 10,000 resamples, `seed`).
    Rows: arch, method, budget, budget_scans, n_pairs, n_runs, n_nan, mean, ci_low, ci_high, ci.
    """
    if ci not in ("t", "bootstrap"):
        raise ValueError(f"ci must be 't' or 'bootstrap', got {ci!r}")
    cells = {}
    for g in gaps:
        cells.setdefault((g.arch, g.method, g.budget), {}).setdefault((g.source, g.target), []).append(g.gap)
    out = []
    for (arch, method, budget), pairs in cells.items():
        values = [v for vs in pairs.values() for v in vs]
        n_nan = sum(1 for v in values if not math.isfinite(v))
        if ci == "t":
            pair_means = [np.mean([v for v in vs if math.isfinite(v)]) for vs in pairs.values()
                          if any(math.isfinite(v) for v in vs)]
            interval = t_interval(pair_means, confidence)
        else:
            interval = cluster_bootstrap_interval(list(pairs.values()), confidence, seed=seed)
        out.append({"arch": arch, "method": method, "budget": budget, "budget_scans": budget_scans(budget),
                    "n_pairs": interval.n, "n_runs": len(values), "n_nan": n_nan, "mean": interval.mean,
                    "ci_low": interval.low, "ci_high": interval.high, "ci": ci})
    return sorted(out, key=lambda r: (r["arch"], r["method"], r["budget_scans"]))


def winners(pairs: Sequence[PairGap], methods: Sequence[str], alpha: float = 0.1) -> tuple:
    """Winner counts per (arch, budget) among `methods`, and the per-pair decisions behind them.

    In each (arch, budget, source, target) with at least two of `methods` having a finite pair-level D_R, the
    highest D_R wins (ties go to the method listed first in `methods`, as a stable sort does), unless every D_R
    is <= 0 (all at or below the baseline): then the decision's winner is NO_WINNER and nobody scores; the win is
    significant when `sign_test` of the scan-level D_R differences (winner - runner-up, cases both scored) gives
    p < alpha. Returns (counts, decisions): counts rows arch, budget, budget_scans, method, wins,
    significant_wins, n_pairs, no_winner (pairs of the budget without a winner), alpha; decision rows arch, budget, source, target, winner, runner_up, gap_winner,
    gap_runner_up, p_value, significant, n_cases.
    """
    order = {m: i for i, m in enumerate(methods)}
    cells = {}
    for p in pairs:
        if p.method in order and math.isfinite(p.gap):
            cells.setdefault((p.arch, p.budget, p.source, p.target), []).append(p)
    decisions = []
    for (arch, budget, source, target), members in sorted(cells.items()):
        if len(members) < 2:
            continue
        ranked = sorted(members, key=lambda p: (-p.gap, order[p.method]))
        top, second = ranked[0], ranked[1]
        if top.gap <= 0:  # every candidate at or below the baseline: nobody won
            decisions.append({"arch": arch, "budget": budget, "source": source, "target": target,
                              "winner": NO_WINNER, "runner_up": top.method, "gap_winner": float("nan"),
                              "gap_runner_up": top.gap, "p_value": float("nan"), "significant": False,
                              "n_cases": 0})
            continue
        shared = sorted(set(top.scan_gaps) & set(second.scan_gaps))
        p_value = sign_test([top.scan_gaps[c] for c in shared], [second.scan_gaps[c] for c in shared])
        decisions.append({"arch": arch, "budget": budget, "source": source, "target": target,
                          "winner": top.method, "runner_up": second.method, "gap_winner": top.gap,
                          "gap_runner_up": second.gap, "p_value": p_value, "significant": p_value < alpha,
                          "n_cases": len(shared)})
    counts = {}
    for d in decisions:
        key = (d["arch"], d["budget"])
        for m in methods:
            counts.setdefault(key + (m,), [0, 0, 0, 0])
        for m in methods:
            counts[key + (m,)][2] += 1
            counts[key + (m,)][3] += int(d["winner"] == NO_WINNER)
        if d["winner"] != NO_WINNER:
            counts[key + (d["winner"],)][0] += 1
            counts[key + (d["winner"],)][1] += int(d["significant"])
    rows = [{"arch": a, "budget": b, "budget_scans": budget_scans(b), "method": m, "wins": w,
             "significant_wins": s, "n_pairs": n, "no_winner": none, "alpha": alpha}
            for (a, b, m), (w, s, n, none) in counts.items()]
    rows.sort(key=lambda r: (r["arch"], r["budget_scans"], order[r["method"]]))
    return rows, decisions


def wilcoxon_greater(x: Sequence[float], y: Sequence[float]) -> float:
    """One-sided Wilcoxon signed-rank p-value of x > y (paired; scipy's default zero handling, 'wilcox', drops
    zero differences); 1.0 when every difference is zero, NaN with fewer than one finite pair."""
    d = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan")
    if not np.any(d != 0):
        return 1.0
    return float(stats.wilcoxon(d, alternative="greater").pvalue)


def tost_ind(x: Sequence[float], y: Sequence[float], low: float, high: float) -> float:
    """TOST equivalence p-value that low < mean(x) - mean(y) < high for independent samples (Schuirmann 1987).

    Two one-sided pooled-variance t-tests, H0: diff <= low and H0: diff >= high; the TOST p is the larger of the
    two (equivalence is shown when it is below alpha). Same test as statsmodels' `ttost_ind(x, y, low, high)`.
    """
    x, y = (np.asarray(v, dtype=float) for v in (x, y))
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if x.size < 2 or y.size < 2 or not low < high:
        return float("nan")
    df = x.size + y.size - 2
    pooled = ((x.size - 1) * x.var(ddof=1) + (y.size - 1) * y.var(ddof=1)) / df
    se = math.sqrt(pooled * (1 / x.size + 1 / y.size))
    diff = x.mean() - y.mean()
    if se == 0:
        return 0.0 if low < diff < high else 1.0
    p_low = float(stats.t.sf((diff - low) / se, df))
    p_high = float(stats.t.cdf((diff - high) / se, df))
    return max(p_low, p_high)


def compare_with_best(candidate: Sequence[float], competitors: Mapping[str, Sequence[float]], alpha: float = 0.05,
                      margin: float = 0.25) -> dict:
    """The SpotTUnet paper's test of a candidate against the best competitor, on paired per-pair mean scores.

    The best competitor has the highest mean. Wilcoxon one-sided (candidate greater); when p >= alpha, TOST with
    the margin +-margin * (sd(candidate) + sd(best)) / 2 (population sd, as the paper's np.std).
    Returns best, mean_candidate, mean_best, wilcoxon_p, tost_p (NaN when not run), margin, n_pairs.
    """
    cand = np.asarray(candidate, dtype=float)
    best = max(competitors, key=lambda k: float(np.mean(competitors[k])))
    other = np.asarray(competitors[best], dtype=float)
    if cand.shape != other.shape:
        raise ValueError(f"candidate and {best!r} need paired scores, got {cand.shape} and {other.shape}")
    p_w = wilcoxon_greater(cand, other)
    eps = margin * 0.5 * (float(np.std(cand)) + float(np.std(other)))
    p_t = tost_ind(cand, other, -eps, eps) if not p_w < alpha else float("nan")
    return {"best": best, "mean_candidate": float(np.mean(cand)), "mean_best": float(np.mean(other)),
            "wilcoxon_p": p_w, "tost_p": p_t, "margin": eps, "n_pairs": int(cand.size)}


def pair_scores(rows: Sequence[dict], metric: str) -> dict:
    """{(arch, method, budget): {(source, target): mean score}} of the adapted runs: the mean over a run's cases,
    then over its replicates (seeds x folds); baseline and oracle rows are left out."""
    runs = {}
    for r in rows:
        if r["strategy"] in (BASELINE, ORACLE):
            continue
        key = (r["arch"], method_label(r["strategy"], r["layers"]), r["budget"], r["source"], r["target"],
               r["seed"], r["fold"])
        runs.setdefault(key, []).append(float(r.get(metric, float("nan"))))
    out = {}
    for (arch, method, budget, source, target, _seed, _fold), values in runs.items():
        finite = [v for v in values if math.isfinite(v)]
        run_mean = float(np.mean(finite)) if finite else float("nan")
        out.setdefault((arch, method, budget), {}).setdefault((source, target), []).append(run_mean)
    return {k: {p: _finite_mean(v) for p, v in pairs.items()} for k, pairs in out.items()}


def _finite_mean(values) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def spottune_tests(scores: Mapping, candidate: str = "spottune", competitors: Sequence[str] = ("all", "first"),
                   alpha: float = 0.05, margin: float = 0.25) -> list:
    """`compare_with_best` per (arch, budget) on the pairs where the candidate and every competitor were scored
    (`scores` from `pair_scores`); rows arch, budget, budget_scans, candidate + compare_with_best's fields."""
    out = []
    for (arch, method, budget), cand in scores.items():
        if method != candidate:
            continue
        others = {c: scores.get((arch, c, budget), {}) for c in competitors}
        shared = sorted(p for p in cand if all(p in o for o in others.values()))
        if not others or len(shared) < 2:
            continue
        result = compare_with_best([cand[p] for p in shared], {c: [o[p] for p in shared] for c, o in others.items()},
                                   alpha=alpha, margin=margin)
        out.append({"arch": arch, "budget": budget, "budget_scans": budget_scans(budget), "candidate": candidate,
                    **result, "alpha": alpha})
    return sorted(out, key=lambda r: (r["arch"], r["budget_scans"]))


def score_by_budget(scores: Mapping, confidence: float = 0.95) -> list:
    """Mean score per (arch, method, budget) over pairs with a Student-t interval (`scores` from `pair_scores`);
    rows arch, method, budget, budget_scans, n_pairs, mean, ci_low, ci_high."""
    out = []
    for (arch, method, budget), pairs in scores.items():
        interval = t_interval(list(pairs.values()), confidence)
        out.append({"arch": arch, "method": method, "budget": budget, "budget_scans": budget_scans(budget),
                    "n_pairs": interval.n, "mean": interval.mean, "ci_low": interval.low, "ci_high": interval.high})
    return sorted(out, key=lambda r: (r["arch"], r["method"], r["budget_scans"]))


def reference_scores(rows: Sequence[dict], metric: str) -> dict:
    """{(arch, 'baseline' | 'oracle', budget): {(source, target): mean score}}: the unadapted source model and the
    oracle on the same cases as the adapted runs of each (arch, budget, source, target), so a score-by-budget row
    compares like with like (case means of replicated baseline/oracle runs first)."""
    base, oracle = {}, {}
    for r in rows:
        if r["strategy"] == BASELINE:
            base.setdefault((r["arch"], r["source"], r["target"], r["case"]), []).append(float(r.get(metric, "nan")))
        elif r["strategy"] == ORACLE:
            oracle.setdefault((r["arch"], r["target"], r["case"]), []).append(float(r.get(metric, "nan")))
    base = {k: _finite_mean(v) for k, v in base.items()}
    oracle = {k: _finite_mean(v) for k, v in oracle.items()}
    cases = {}
    for r in rows:
        if r["strategy"] not in (BASELINE, ORACLE):
            cases.setdefault((r["arch"], r["budget"], r["source"], r["target"]), set()).add(r["case"])
    out = {}
    for (arch, budget, source, target), chosen in cases.items():
        for name, values in ((BASELINE, [base.get((arch, source, target, c), float("nan")) for c in chosen]),
                             (ORACLE, [oracle.get((arch, target, c), float("nan")) for c in chosen])):
            value = _finite_mean(values)
            if math.isfinite(value):
                out.setdefault((arch, name, budget), {})[(source, target)] = value
    return out
