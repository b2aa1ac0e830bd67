"""Agreement with DeepMind's surface-distance package (skipped when it is not installed)."""

import math

import numpy as np
import pytest
from scipy import ndimage

from fewshot_da.metrics import hd95, reference, surface_dice_many, surface_distances

# the package uses scipy.ndimage's deprecated `filters` / `morphology` namespaces
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def deepmind():
    # PyPI surface-distance 0.1 still uses np.Inf / np.NaN, removed in NumPy 2
    if not hasattr(np, "Inf"):
        np.Inf = np.inf
    if not hasattr(np, "NaN"):
        np.NaN = np.nan
    return pytest.importorskip("surface_distance", reason="DeepMind's surface-distance is not installed")


def test_area_tables_match(deepmind):
    from surface_distance import lookup_tables

    for spacing in [(1.0, 1.0, 1.0), (3.0, 0.8, 0.8), (0.9375, 0.9375, 1.2)]:
        np.testing.assert_allclose(
            reference.surfel_areas(spacing),
            lookup_tables.create_table_neighbour_code_to_surface_area(spacing),
            rtol=0,
            atol=1e-12,
        )
    for spacing in [(1.0, 1.0), (2.0, 1.0), (0.5, 1.7)]:
        np.testing.assert_allclose(
            reference.surfel_areas(spacing),
            lookup_tables.create_table_neighbour_code_to_contour_length(spacing),
            rtol=0,
            atol=1e-12,
        )


@pytest.mark.parametrize("ndim", [2, 3])
def test_random_masks_match_deepmind(deepmind, ndim):
    rng = np.random.default_rng(ndim)
    for trial in range(6):
        shape = tuple(rng.integers(4, 16, size=ndim))
        spacing = tuple(float(s) for s in rng.choice([0.5, 0.9375, 1.0, 1.2, 2.0, 3.0], size=ndim))
        gt = ndimage.binary_dilation(rng.random(shape) < 0.06)
        pred = ndimage.binary_dilation(rng.random(shape) < 0.06) if trial % 2 else rng.random(shape) < 0.4
        theirs = deepmind.compute_surface_distances(gt, pred, spacing)
        ours = surface_distances(gt, pred, spacing_mm=spacing)
        # DeepMind sorts by (distance, area); ours are in raster order
        for d, a, key_d, key_a in [
            (ours.gt_to_pred_mm, ours.gt_areas_mm2, "distances_gt_to_pred", "surfel_areas_gt"),
            (ours.pred_to_gt_mm, ours.pred_areas_mm2, "distances_pred_to_gt", "surfel_areas_pred"),
        ]:
            order = np.lexsort((a, d))
            np.testing.assert_array_equal(d[order], theirs[key_d])
            np.testing.assert_allclose(a[order], theirs[key_a], rtol=0, atol=1e-12)
        tolerances = [0.0, 0.5, 1.0, 2.0, 3.0]
        for tolerance, value in zip(
            tolerances, surface_dice_many(gt, pred, spacing_mm=spacing, tolerances_mm=tolerances)
        ):
            expected = deepmind.compute_surface_dice_at_tolerance(theirs, tolerance)
            assert value == pytest.approx(expected, abs=1e-12)
        assert hd95(gt, pred, spacing_mm=spacing) == deepmind.compute_robust_hausdorff(theirs, 95)


def test_one_empty_matches_deepmind(deepmind):
    gt = np.zeros((6, 6, 6), bool)
    gt[2:4, 2:4, 2:4] = True
    empty = np.zeros_like(gt)
    theirs = deepmind.compute_surface_distances(gt, empty, (1, 1, 1))
    assert (
        surface_dice_many(gt, empty, spacing_mm=(1, 1, 1), tolerances_mm=[1])[0]
        == deepmind.compute_surface_dice_at_tolerance(theirs, 1)
        == 0.0
    )
    assert hd95(gt, empty, spacing_mm=(1, 1, 1)) == deepmind.compute_robust_hausdorff(theirs, 95) == math.inf
