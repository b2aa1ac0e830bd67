"""Voxel-overlap metrics for binary masks (Dice, pixel error) and label maps (adjusted Rand index)."""

from __future__ import annotations

import numpy as np

from fewshot_da.errors import InputError


def _pair(gt, pred) -> tuple[np.ndarray, np.ndarray]:
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise InputError(f"gt and pred shapes differ: {gt.shape} vs {pred.shape}")
    for name, a in (("gt", gt), ("pred", pred)):
        if not (a.dtype == np.bool_ or np.issubdtype(a.dtype, np.integer)):
            raise InputError(f"{name} must be a bool or integer mask, got dtype {a.dtype}")
    return gt, pred


def dice(gt, pred) -> float:
    """Volumetric Dice 2|A and B| / (|A| + |B|) of the nonzero voxels, in [0, 1].

    Edge case: both masks empty -> 1.0 (the seeds' dpipe `dice_score` convention; DeepMind returns NaN).
    """
    gt, pred = _pair(gt, pred)
    a, b = gt != 0, pred != 0
    sizes = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    if sizes == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(a & b)) / sizes


def pixel_error(gt, pred) -> float:
    """Fraction of pixels (voxels) whose foreground/background label differs, in [0, 1].

    Edge case: both masks empty -> 0.0 (nothing disagrees). Zero-size arrays raise InputError.
    """
    gt, pred = _pair(gt, pred)
    if gt.size == 0:
        raise InputError("pixel_error needs non-empty arrays")
    return float(np.count_nonzero((gt != 0) != (pred != 0)) / gt.size)


def _dense_labels(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0..k-1 (bool and uint8 masks directly, without sorting)."""
    flat = labels.ravel()
    if flat.dtype == np.bool_ or flat.dtype == np.uint8:
        present = np.flatnonzero(np.bincount(flat.view(np.uint8), minlength=256))
        lookup = np.zeros(256, np.int64)
        lookup[present] = np.arange(len(present))
        return lookup[flat.view(np.uint8)]
    return np.unique(flat, return_inverse=True)[1].ravel()


def adjusted_rand_index(gt, pred) -> float:
    """Adjusted Rand index of the two labelings of the pixels (labels as given), in [-0.5, 1]; 1 = same partition.

    Same definition as scikit-learn's `adjusted_rand_score` (pair-confusion form from the contingency table):
    with tp/fp/fn/tn the pair counts, ARI = 2 (tp tn - fn fp) / ((tp + fn)(fn + tn) + (tp + fp)(fp + tn)),
    and 1.0 when fn == fp == 0. Edge cases: both masks empty (one label each) -> 1.0; one empty and the
    other not -> 0.0 (a constant labeling carries no information).
    """
    gt, pred = _pair(gt, pred)
    n = int(gt.size)
    if n == 0:
        return 1.0
    a, b = _dense_labels(gt), _dense_labels(pred)
    nb = int(b.max()) + 1
    contingency = np.bincount(a.astype(np.int64) * nb + b, minlength=(int(a.max()) + 1) * nb)
    # Python ints: n^2 and the products below overflow int64 for 3D volumes
    sum_squares = sum(int(c) * int(c) for c in contingency[contingency > 0])
    rows = np.bincount(a)
    cols = np.bincount(b)
    sum_rows = sum(int(c) * int(c) for c in rows)
    sum_cols = sum(int(c) * int(c) for c in cols)
    tp = sum_squares - n
    fp = sum_cols - sum_squares
    fn = sum_rows - sum_squares
    tn = n * n - fp - fn - sum_squares
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))
