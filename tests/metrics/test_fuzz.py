"""Seeded fuzz: the C++ surface metrics against the NumPy/SciPy oracle on random 2D and 3D pairs.

Random shapes, anisotropic spacings and tolerances; blobs near each other (ring-stencil path), far apart
or tiny against large (far-ring and block-grid paths), touching the border, and one or both empty. Reports the largest
|difference| seen (run with -s to print it).
"""

import math

import numpy as np
import pytest
from scipy import ndimage

from fewshot_da.metrics import (
    METRICS,
    adjusted_rand_index,
    assd,
    assd_from,
    dice,
    hd95,
    hd_from,
    pixel_error,
    reference,
    score_case,
    surface_dice_key,
    surface_dice_many,
    surface_distances,
)

N_PAIRS = 320
ATOL = 1e-9


def _random_pair(rng):
    ndim = int(rng.choice([2, 3]))
    shape = tuple(int(n) for n in (rng.integers(3, 48, size=2) if ndim == 2 else rng.integers(2, 22, size=3)))
    spacing = tuple(float(s) for s in rng.uniform(0.3, 3.5, size=ndim))
    kind = rng.integers(0, 6)

    def blob(density):
        seeds = rng.random(shape) < density
        return ndimage.binary_dilation(seeds, iterations=int(rng.integers(0, 3))) if seeds.any() else seeds

    if kind == 0:  # two unrelated blob sets
        gt, pred = blob(0.04), blob(0.04)
    elif kind == 1:  # a perturbed copy: near surfaces, the common case
        gt = blob(0.05)
        pred = np.roll(ndimage.binary_dilation(gt) if rng.random() < 0.5 else gt, int(rng.integers(-2, 3)),
                       axis=int(rng.integers(ndim)))
    elif kind == 2:  # far apart: small blobs in opposite corners (distances beyond the ring stencil)
        gt, pred = np.zeros(shape, bool), np.zeros(shape, bool)
        gt[tuple(slice(0, max(1, n // 5)) for n in shape)] = True
        pred[tuple(slice(n - max(1, n // 6), n) for n in shape)] = True
    elif kind == 3:  # dense noise
        gt, pred = rng.random(shape) < 0.5, rng.random(shape) < 0.3
    elif kind == 4:  # one or both empty
        gt = blob(0.05) if rng.random() < 0.5 else np.zeros(shape, bool)
        pred = np.zeros(shape, bool)
        if rng.random() < 0.5:
            gt, pred = pred, gt
    else:  # a large blob and a few far specks
        gt = ndimage.binary_dilation(blob(0.02), iterations=2)
        pred = gt.copy()
        pred[tuple(int(rng.integers(n)) for n in shape)] ^= True
        pred[tuple(rng.integers(0, n, size=3) for n in shape)] = True
    tolerances = [float(t) for t in rng.uniform(0.0, 6.0, size=3)] + [float(rng.choice(spacing))]
    return gt, pred, spacing, tolerances


def _diff(a: float, b: float) -> float:
    if math.isnan(a) and math.isnan(b) or (math.isinf(a) and a == b):
        return 0.0
    return abs(a - b)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_fuzz_against_oracle():
    rng = np.random.default_rng(20261202)
    worst = {"distance": 0.0, "surface_dice": 0.0, "hd95": 0.0, "assd": 0.0}
    kinds_2d = kinds_3d = 0
    for trial in range(N_PAIRS):
        gt, pred, spacing, tolerances = _random_pair(rng)
        kinds_2d += gt.ndim == 2
        kinds_3d += gt.ndim == 3
        ref = reference.surface_distances(gt, pred, spacing_mm=spacing)
        ours = surface_distances(gt, pred, spacing_mm=spacing)
        for a, b in zip(ours, ref):
            assert a.shape == b.shape, trial
            both_inf = np.isinf(a) & np.isinf(b)
            if a.size:
                worst["distance"] = max(worst["distance"], float(np.max(np.abs(np.where(both_inf, 0, a - b)))))
        stencil = surface_dice_many(gt, pred, spacing_mm=spacing, tolerances_mm=tolerances)
        # score_case: surface Dice from the exact-distance pass must equal the stencil path bit for bit
        case = score_case(gt, pred, spacing_mm=spacing, tolerances_mm=tolerances, metrics=METRICS)
        for t, value in zip(tolerances, stencil):
            expected = reference.surface_dice(gt, pred, spacing_mm=spacing, tolerance_mm=t, distances=ref)
            worst["surface_dice"] = max(worst["surface_dice"], _diff(value, expected))
            assert case[surface_dice_key(t)] == value or (math.isnan(value) and math.isnan(case[surface_dice_key(t)]))
        assert case["dice"] == dice(gt, pred) and case["ari"] == adjusted_rand_index(gt, pred)
        assert case["pixel_error_pct"] == 100.0 * pixel_error(gt, pred)
        worst["hd95"] = max(worst["hd95"], _diff(hd95(gt, pred, spacing_mm=spacing), hd_from(ref, 95.0)))
        worst["assd"] = max(worst["assd"], _diff(assd(gt, pred, spacing_mm=spacing), assd_from(ref)))
        assert _diff(case["hd95_mm"], hd_from(ref, 95.0)) <= ATOL and _diff(case["assd_mm"], assd_from(ref)) <= ATOL
        assert max(worst.values()) <= ATOL, (trial, gt.shape, spacing, worst)
    print(f"\nfuzz: {N_PAIRS} pairs ({kinds_2d} 2D, {kinds_3d} 3D); largest |difference|: "
          + ", ".join(f"{k} {v:.3g}" for k, v in worst.items()))
    assert kinds_2d > 100 and kinds_3d > 100


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 0.7, 0.9)])
def test_far_surfaces_exact(spacing):
    # distances of 20-40 voxels, beyond both rings: every one comes from the block grid
    gt, pred = np.zeros((30, 34, 40), bool), np.zeros((30, 34, 40), bool)
    gt[2:6, 3:9, 1:5] = True
    pred[20:29, 25:33, 30:39] = True
    pred[25, 2, 38] = True
    ours = surface_distances(gt, pred, spacing_mm=spacing)
    ref = reference.surface_distances(gt, pred, spacing_mm=spacing)
    assert ours.gt_to_pred_mm.min() > 15 * min(spacing)
    for a, b in zip(ours, ref):
        np.testing.assert_array_equal(a, b)
    assert hd95(gt, pred, spacing_mm=spacing) == hd_from(ref, 95.0)
    assert assd(gt, pred, spacing_mm=spacing) == pytest.approx(assd_from(ref), abs=ATOL)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.4, 2.5)])
def test_far_surfaces_exact_2d(spacing):
    # 2D rings are wider (~11 and ~50 pixels at 1 mm): distances from 1 to ~200 pixels cross all three paths
    rng = np.random.default_rng(5)
    gt, pred = np.zeros((150, 160), bool), np.zeros((150, 160), bool)
    gt[10:40, 10:50] = True
    pred[12:45, 8:47] = True
    pred[140:145, 150:158] = True
    pred[rng.integers(0, 150, 6), rng.integers(0, 160, 6)] = True
    ours = surface_distances(gt, pred, spacing_mm=spacing)
    ref = reference.surface_distances(gt, pred, spacing_mm=spacing)
    assert ours.pred_to_gt_mm.max() > 60 * min(spacing)
    for a, b in zip(ours, ref):
        np.testing.assert_array_equal(a, b)
    assert hd95(gt, pred, spacing_mm=spacing) == hd_from(ref, 95.0)
