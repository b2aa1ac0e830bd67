"""Share of the oracle-baseline gap closed, D_R = (D - D_B) / (D_O - D_B), and the paired sign test."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


def gap_closed(score: float, baseline: float, oracle: float) -> float:
    """D_R = (D - D_B) / (D_O - D_B) for mean scores over one scan set; NaN when D_O == D_B or any is NaN."""
    if not all(math.isfinite(v) for v in (score, baseline, oracle)) or oracle == baseline:
        return float("nan")
    return (score - baseline) / (oracle - baseline)


def pair_gap_closed(scores: Sequence[float], baseline: Sequence[float], oracle: Sequence[float]) -> float:
    """Pair-level D_R from per-scan scores of the same scans (the papers' figures): means first, then the ratio."""
    s, b, o = (np.asarray(v, dtype=float) for v in (scores, baseline, oracle))
    if not (s.shape == b.shape == o.shape) or s.size == 0:
        raise ValueError(f"pair_gap_closed needs equal-length non-empty score lists, got {s.shape}, {b.shape}, {o.shape}")
    return gap_closed(float(np.mean(s)), float(np.mean(b)), float(np.mean(o)))


def scan_gap_closed(scores: Sequence[float], baseline: Sequence[float], oracle: Sequence[float]) -> np.ndarray:
    """Scan-level D_R_i = (D_i - D_B,i) / (D_O,i - D_B,i); NaN where D_O,i == D_B,i (unstable by nature)."""
    s, b, o = (np.asarray(v, dtype=float) for v in (scores, baseline, oracle))
    den = o - b
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den != 0, (s - b) / np.where(den != 0, den, 1.0), np.nan)


def sign_test(x: Sequence[float], y: Sequence[float]) -> float:
    """Two-sided paired sign test of median(x - y) = 0; zeros and NaN pairs dropped (statsmodels' sign_test)."""
    d = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    d = d[np.isfinite(d) & (d != 0)]
    if d.size == 0:
        return 1.0
    return float(stats.binomtest(int((d > 0).sum()), int(d.size), 0.5).pvalue)


def format_mean_std(values: Sequence[float], digits: int = 3) -> str:
    """'0.840 ± 0.050 (n=12, 1 NaN)': mean and std over finite values, NaNs counted, never hidden."""
    v = np.asarray(values, dtype=float)
    finite = v[np.isfinite(v)]
    n_nan = int(v.size - finite.size)
    if finite.size == 0:
        return f"nan (n={v.size}, {n_nan} NaN)"
    text = f"{finite.mean():.{digits}f} ± {finite.std():.{digits}f} (n={v.size}"
    return text + (f", {n_nan} NaN)" if n_nan else ")")


# ---- D_R from results.csv rows -------------------------------------------------------------------------------

BASELINE, ORACLE = "baseline", "oracle"


def method_label(strategy: str, layers: str) -> str:
    """Display name of an adaptation method: the layers for `freeze` ('first'), else 'strategy' or 'strategy:layers'."""
    strategy, layers = str(strategy or ""), str(layers or "")
    if strategy in ("freeze", "") and layers:
        return layers
    return f"{strategy}:{layers}" if layers else strategy


@dataclass(eq=False)
class RunGap:
    """D_R of one adapted run (one seed/fold) on its target cases that have a baseline and an oracle score.

    `scores`, `baseline`, `oracle` and `scan_gaps` are per case, in the order of `cases`; `gap` is pair-level.
    `n_dropped` counts the run's cases left out: no baseline or oracle row, or a NaN in any of the three.
    """

    arch: str
    source: str
    target: str
    strategy: str
    layers: str
    budget: str
    seed: str
    fold: str
    cases: tuple
    scores: np.ndarray
    baseline: np.ndarray
    oracle: np.ndarray
    gap: float
    scan_gaps: np.ndarray
    n_dropped: int

    @property
    def method(self) -> str:
        return method_label(self.strategy, self.layers)


@dataclass(eq=False)
class PairGap:
    """D_R of one (arch, source, target, method, budget), averaged over its replicates (seeds x folds).

    `gap` is the mean of the replicates' finite pair-level D_R (NaN when none is finite); `scan_gaps` maps a case
    to the mean of its scan-level D_R over the replicates that scored it.
    """

    arch: str
    source: str
    target: str
    method: str
    budget: str
    gap: float
    replicate_gaps: tuple
    scan_gaps: dict


def _finite_mean(values) -> float:
    """Mean of the finite values (NaN when none); plain Python, as it runs once per case of a large grid."""
    finite = [float(v) for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def _case_means(rows, metric, key):
    """{key(row) + (case,): mean of the finite `metric` values of the rows with that key} (replicates averaged)."""
    values = {}
    for row in rows:
        values.setdefault(key(row) + (row["case"],), []).append(float(row.get(metric, float("nan"))))
    return {k: _finite_mean(v) for k, v in values.items()}


def run_gaps(rows: Sequence[dict], metric: str) -> list:
    """Pair- and scan-level D_R of every adapted run in `rows` (results.csv rows) on `metric`.

    D_B is the `baseline` rows' score of the same case (source model, same arch, source and target); D_O is the
    `oracle` rows' score of the case (same arch, source == target); several baseline/oracle runs of a case are
    averaged. The pair-level D_R uses means over the same cases for D, D_B and D_O (REFERENCE §5).
    """
    base = _case_means([r for r in rows if r["strategy"] == BASELINE], metric,
                       lambda r: (r["arch"], r["source"], r["target"]))
    oracle = _case_means([r for r in rows if r["strategy"] == ORACLE], metric,
                         lambda r: (r["arch"], r["target"]))
    units = {}
    for row in rows:
        if row["strategy"] in (BASELINE, ORACLE):
            continue
        key = tuple(str(row[c]) for c in ("arch", "source", "target", "strategy", "layers", "budget", "seed", "fold"))
        units.setdefault(key, []).append(row)
    gaps = []
    for key in sorted(units):
        arch, source, target = key[:3]
        cases, s, b, o = [], [], [], []
        dropped = 0
        for row in sorted(units[key], key=lambda r: r["case"]):
            triple = (float(row.get(metric, float("nan"))), base.get((arch, source, target, row["case"]), float("nan")),
                      oracle.get((arch, target, row["case"]), float("nan")))
            if not all(math.isfinite(v) for v in triple):
                dropped += 1
                continue
            cases.append(row["case"])
            s.append(triple[0])
            b.append(triple[1])
            o.append(triple[2])
        s, b, o = (np.asarray(v, dtype=float) for v in (s, b, o))
        gap = pair_gap_closed(s, b, o) if s.size else float("nan")
        gaps.append(RunGap(*key, cases=tuple(cases), scores=s, baseline=b, oracle=o, gap=gap,
                           scan_gaps=scan_gap_closed(s, b, o), n_dropped=dropped))
    return gaps


def pair_gaps(gaps: Sequence[RunGap]) -> list:
    """Replicates (seeds x folds) of each (arch, source, target, method, budget) averaged into one PairGap."""
    groups = {}
    for g in gaps:
        groups.setdefault((g.arch, g.source, g.target, g.method, g.budget), []).append(g)
    out = []
    for key, members in groups.items():
        finite = [g.gap for g in members if math.isfinite(g.gap)]
        per_case = {}
        for g in members:
            for case, value in zip(g.cases, g.scan_gaps):
                per_case.setdefault(case, []).append(value)
        scan = {c: _finite_mean(v) for c, v in per_case.items()}
        out.append(PairGap(*key, gap=float(np.mean(finite)) if finite else float("nan"),
                           replicate_gaps=tuple(g.gap for g in members), scan_gaps=scan))
    return out


def pair_denominators(rows: Sequence[dict], metric: str) -> list:
    """D_O - D_B of every (arch, source, target) with baseline rows: means over the target cases that have both a
    finite baseline and a finite oracle score. Rows arch, source, target, n_cases, baseline, oracle, gap (NaN
    without a shared case)."""
    base = _case_means([r for r in rows if r["strategy"] == BASELINE], metric,
                       lambda r: (r["arch"], r["source"], r["target"]))
    oracle = _case_means([r for r in rows if r["strategy"] == ORACLE], metric, lambda r: (r["arch"], r["target"]))
    pairs = {}
    for (arch, source, target, case), d_b in base.items():
        d_o = oracle.get((arch, target, case), float("nan"))
        entry = pairs.setdefault((arch, source, target), ([], []))
        if math.isfinite(d_b) and math.isfinite(d_o):
            entry[0].append(d_b)
            entry[1].append(d_o)
    out = []
    for (arch, source, target), (b, o) in sorted(pairs.items()):
        d_b, d_o = (float(np.mean(v)) if v else float("nan") for v in (b, o))
        out.append({"arch": arch, "source": source, "target": target, "n_cases": len(b), "baseline": d_b,
                    "oracle": d_o, "gap": d_o - d_b})
    return out
