"""Share of the oracle-baseline gap closed, D_R = (D - D_B) / (D_O - D_B), and the paired sign test."""
from __future__ import annotations

import math
from typing import Sequence

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
