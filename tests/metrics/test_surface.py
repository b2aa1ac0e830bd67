"""Surface metrics: the C++ core against the NumPy/SciPy oracle, hand-derived cases, edge cases, properties."""

import itertools
import math

import numpy as np
import pytest
from scipy import ndimage

from fewshot_da import _backend
from fewshot_da.errors import InputError
from fewshot_da.metrics import (
    assd,
    hd95,
    reference,
    score_case,
    surface_dice,
    surface_dice_many,
    surface_distances,
)

SPACINGS_3D = [(1.0, 1.0, 1.0), (3.0, 0.8, 0.8), (0.9375, 0.9375, 1.2), (1.0, 0.95, 0.95)]
SPACINGS_2D = [(1.0, 1.0), (2.0, 1.0), (0.5, 1.7)]
TOLERANCES = [0.0, 0.5, 1.0, 1.2, 2.0, 3.0]


def blob_pair(rng, shape, density=0.08, dilate=1):
    """Two random blobby masks (dilated random seeds), touching the border now and then."""

    def blob():
        seeds = rng.random(shape) < density
        return ndimage.binary_dilation(seeds, iterations=dilate) if dilate else seeds

    return blob(), blob()


def assert_same_distances(ours, ref):
    # both list surfels in raster order of the corner grid, so they agree element by element
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)


@pytest.mark.parametrize("num_threads", [1, 2, 3])
@pytest.mark.parametrize("spacing_mm", SPACINGS_3D)
def test_3d_matches_oracle(spacing_mm, num_threads):
    rng = np.random.default_rng(hash((spacing_mm, num_threads)) % 2**32)
    for shape, density, dilate in [((9, 11, 13), 0.05, 1), ((6, 7, 5), 0.4, 0), ((12, 4, 10), 0.03, 2)]:
        gt, pred = blob_pair(rng, shape, density, dilate)
        assert_same_distances(
            surface_distances(gt, pred, spacing_mm=spacing_mm, num_threads=num_threads),
            reference.surface_distances(gt, pred, spacing_mm=spacing_mm),
        )
        ours = surface_dice_many(
            gt, pred, spacing_mm=spacing_mm, tolerances_mm=TOLERANCES, num_threads=num_threads
        )
        expected = reference.surface_distances(gt, pred, spacing_mm=spacing_mm)
        for tolerance, value in zip(TOLERANCES, ours):
            assert value == pytest.approx(
                reference.surface_dice(
                    gt, pred, spacing_mm=spacing_mm, tolerance_mm=tolerance, distances=expected
                ),
                abs=1e-9,
            )


@pytest.mark.parametrize("spacing_mm", SPACINGS_2D)
def test_2d_matches_oracle(spacing_mm):
    rng = np.random.default_rng(7)
    for shape, density, dilate in [((17, 23), 0.05, 1), ((8, 9), 0.5, 0), ((30, 5), 0.02, 2)]:
        gt, pred = blob_pair(rng, shape, density, dilate)
        assert_same_distances(
            surface_distances(gt, pred, spacing_mm=spacing_mm),
            reference.surface_distances(gt, pred, spacing_mm=spacing_mm),
        )
        for tolerance in TOLERANCES:
            assert surface_dice(gt, pred, spacing_mm=spacing_mm, tolerance_mm=tolerance) == pytest.approx(
                reference.surface_dice(gt, pred, spacing_mm=spacing_mm, tolerance_mm=tolerance), abs=1e-9
            )


def test_wide_tolerance_uses_exact_distances():
    # 40 mm at 0.5 mm spacing is ~2.7e6 stencil offsets, so the EDT answers; it must agree with the oracle
    rng = np.random.default_rng(3)
    gt, pred = blob_pair(rng, (10, 12, 14), 0.03, 1)
    for tolerance in (1.5, 40.0, math.inf):
        assert surface_dice(gt, pred, spacing_mm=(0.5, 0.5, 0.5), tolerance_mm=tolerance) == pytest.approx(
            reference.surface_dice(gt, pred, spacing_mm=(0.5, 0.5, 0.5), tolerance_mm=tolerance), abs=1e-9
        )


def test_corner_codes_and_plain_loop_match():
    # corner_code()/stencil_hit() in surfel.h are what the CUDA kernel runs; check them on the host
    rng = np.random.default_rng(11)
    for shape, spacing in [((7, 8, 9), [1.0, 1.0, 1.0]), ((6, 5, 7), [2.0, 0.7, 1.1]), ((9, 13), [1.0, 2.0])]:
        gt, pred = blob_pair(rng, shape, 0.1, 1)
        np.testing.assert_array_equal(_backend.core.corner_codes(gt), reference.corner_codes(gt))
        fast = _backend.core.surface_dice_areas(gt, pred, spacing, [0.0, 1.0, 2.5], 2)
        plain = _backend.core.surface_dice_areas_plain(gt, pred, spacing, [0.0, 1.0, 2.5])
        np.testing.assert_array_equal(fast, plain)


@pytest.mark.parametrize("shape", [(6, 9, 150), (3, 70, 129), (200, 131)])
def test_long_rows_match_oracle_and_plain_loop(shape):
    # rows longer than 64 corners: the packed-bit rows span several words and stencil shifts cross them
    rng = np.random.default_rng(len(shape) * 100 + shape[-1])
    gt, pred = blob_pair(rng, shape, 0.03, 1)
    gt[..., -1] = True  # touches the far end of every row
    spacing = (1.2, 0.9, 0.7)[-len(shape) :]
    tolerances = [0.0, 0.7, 1.0, 2.0, 3.0]
    ours = surface_dice_many(gt, pred, spacing_mm=spacing, tolerances_mm=tolerances, num_threads=2)
    expected = reference.surface_distances(gt, pred, spacing_mm=spacing)
    for tolerance, value in zip(tolerances, ours):
        assert value == pytest.approx(
            reference.surface_dice(gt, pred, spacing_mm=spacing, tolerance_mm=tolerance, distances=expected),
            abs=1e-9,
        )
    np.testing.assert_array_equal(
        _backend.core.surface_dice_areas(gt, pred, list(spacing), tolerances, 1),
        _backend.core.surface_dice_areas_plain(gt, pred, list(spacing), tolerances),
    )


def test_two_pixels_hand_derived():
    # DeepMind's 2D case. Spacing (2, 1) mm, single pixels two columns apart: each pixel's contour is four
    # corner cuts of length 0.5 * sqrt(2^2 + 1^2) mm at the pixel's corners. The gt pixel's right corners
    # are one column (1 mm) from the pred pixel's left corners, its left corners two columns (2 mm) away:
    # directed distances [1, 1, 2, 2] mm both ways, so surface Dice at 1 mm = 0.5, HD100 = 2, ASSD = 1.5.
    gt = np.zeros((5, 7), bool)
    pred = np.zeros((5, 7), bool)
    gt[2, 2] = True
    pred[2, 4] = True
    d = surface_distances(gt, pred, spacing_mm=(2, 1))
    np.testing.assert_allclose(np.sort(d.gt_to_pred_mm), [1, 1, 2, 2])
    np.testing.assert_allclose(np.sort(d.pred_to_gt_mm), [1, 1, 2, 2])
    np.testing.assert_allclose(d.gt_areas_mm2, [0.5 * math.sqrt(5)] * 4)
    assert surface_dice(gt, pred, spacing_mm=(2, 1), tolerance_mm=1.0) == pytest.approx(0.5)
    assert surface_dice(gt, pred, spacing_mm=(2, 1), tolerance_mm=0.999) == 0.0
    assert surface_dice(gt, pred, spacing_mm=(2, 1), tolerance_mm=2.0) == pytest.approx(1.0)
    assert hd95(gt, pred, spacing_mm=(2, 1), percent=100) == pytest.approx(2.0)
    assert assd(gt, pred, spacing_mm=(2, 1)) == pytest.approx(1.5)


def test_single_voxel_cube_area_and_shift():
    # One voxel at spacing (2, 1, 1): its surface is eight corner triangles (one per corner, code with a
    # single bit), each with normal (1, 1, 1)/8 scaled to (1*1, 2*1, 2*1)/8 -> area 3/8 mm^2; total 3 mm^2.
    gt = np.zeros((3, 3, 3), bool)
    gt[1, 1, 1] = True
    d = surface_distances(gt, gt, spacing_mm=(2, 1, 1))
    assert len(d.gt_areas_mm2) == 8
    np.testing.assert_allclose(d.gt_areas_mm2, 3 / 8)
    np.testing.assert_allclose(d.gt_to_pred_mm, 0.0)
    # the same voxel shifted one step along axis 0 (2 mm): corners are shared on one face
    pred = np.zeros((3, 3, 3), bool)
    pred[2, 1, 1] = True
    d = surface_distances(gt, pred, spacing_mm=(2, 1, 1))
    np.testing.assert_allclose(np.sort(d.gt_to_pred_mm), [0, 0, 0, 0, 2, 2, 2, 2])
    assert surface_dice(gt, pred, spacing_mm=(2, 1, 1), tolerance_mm=1.9) == pytest.approx(0.5)
    assert surface_dice(gt, pred, spacing_mm=(2, 1, 1), tolerance_mm=2.0) == pytest.approx(1.0)


def test_half_plane_saturates():
    # Half-plane shifted 10 columns at 1.2 mm column spacing: every surfel is 12 mm from the other surface
    # (plus the border corners), so 12 mm and 13 mm give the same, saturated, value.
    gt = np.zeros((20, 40), bool)
    pred = np.zeros((20, 40), bool)
    gt[:, :15] = True
    pred[:, :25] = True
    at = [surface_dice(gt, pred, spacing_mm=(1.0, 1.2), tolerance_mm=t) for t in (11.9, 12.0, 13.0)]
    assert at[0] < at[1] == at[2]


@pytest.mark.parametrize("ndim", [2, 3])
def test_empty_masks(ndim):
    shape = (6, 7, 8)[:ndim]
    spacing = (1.0, 1.5, 0.5)[:ndim]
    empty = np.zeros(shape, bool)
    full = np.zeros(shape, bool)
    full[(slice(1, 4),) * ndim] = True
    assert math.isnan(surface_dice(empty, empty, spacing_mm=spacing, tolerance_mm=1))
    assert surface_dice(full, empty, spacing_mm=spacing, tolerance_mm=1) == 0.0
    assert surface_dice(empty, full, spacing_mm=spacing, tolerance_mm=100) == 0.0
    assert math.isnan(hd95(empty, empty, spacing_mm=spacing))
    assert hd95(full, empty, spacing_mm=spacing) == math.inf
    assert math.isnan(assd(empty, empty, spacing_mm=spacing))
    assert assd(empty, full, spacing_mm=spacing) == math.inf
    d = surface_distances(full, empty, spacing_mm=spacing)
    assert len(d.pred_to_gt_mm) == 0 and np.all(np.isinf(d.gt_to_pred_mm))
    scores = score_case(empty, empty, spacing_mm=spacing)
    assert scores["dice"] == 1.0 and math.isnan(scores["surface_dice_1mm"])


@pytest.mark.parametrize("ndim", [2, 3])
def test_border_full_and_thin_structures(ndim):
    rng = np.random.default_rng(5)
    shape = (5, 6, 7)[:ndim]
    spacing = (0.7, 1.3, 1.0)[:ndim]
    cases = [np.ones(shape, bool)]  # the whole array: its surface lies on the array border
    thin = np.zeros(shape, bool)
    thin[(2,) + (slice(None),) * (ndim - 1)] = True  # one-voxel-thick sheet/line touching the border
    cases.append(thin)
    line = np.zeros(shape, bool)
    line[(slice(None),) + (3,) * (ndim - 1)] = True
    cases.append(line)
    corner = np.zeros(shape, bool)
    corner[(0,) * ndim] = True  # single voxel in the array corner
    cases.append(corner)
    cases.append(rng.random(shape) < 0.5)
    for gt in cases:
        for pred in cases:
            expected = reference.surface_distances(gt, pred, spacing_mm=spacing)
            assert_same_distances(surface_distances(gt, pred, spacing_mm=spacing), expected)
            ours = surface_dice_many(gt, pred, spacing_mm=spacing, tolerances_mm=[0.0, 1.0, 2.0])
            for tolerance, value in zip([0.0, 1.0, 2.0], ours):
                assert value == pytest.approx(
                    reference.surface_dice(
                        gt, pred, spacing_mm=spacing, tolerance_mm=tolerance, distances=expected
                    ),
                    abs=1e-9,
                )


def test_monotone_saturating_symmetric_thread_independent():
    rng = np.random.default_rng(9)
    gt, pred = blob_pair(rng, (16, 18, 14), 0.02, 2)
    spacing = (1.2, 0.9, 0.9)
    tolerances = np.linspace(0, 30, 31)
    values = surface_dice_many(gt, pred, spacing_mm=spacing, tolerances_mm=tolerances)
    assert all(a <= b for a, b in itertools.pairwise(values))
    assert values[-1] == 1.0  # farther than any two points of the 16 x 18 x 14 box (about 28 mm)
    swapped = surface_dice_many(pred, gt, spacing_mm=spacing, tolerances_mm=tolerances)
    np.testing.assert_allclose(values, swapped, rtol=0, atol=1e-12)
    assert hd95(gt, pred, spacing_mm=spacing) == hd95(pred, gt, spacing_mm=spacing)
    assert assd(gt, pred, spacing_mm=spacing) == pytest.approx(assd(pred, gt, spacing_mm=spacing), abs=1e-12)


def test_same_result_for_any_thread_count():
    # large enough (64^3) that the core really splits the work (it uses at most one thread per 64k voxels)
    rng = np.random.default_rng(4)
    gt, pred = blob_pair(rng, (64, 64, 64), 0.002, 3)
    spacing = (1.2, 0.9, 0.9)
    by_threads = [
        surface_dice_many(gt, pred, spacing_mm=spacing, tolerances_mm=[1, 2, 50], num_threads=n)
        for n in (1, 2, 3, 4)
    ]
    assert all(v == by_threads[0] for v in by_threads)  # bitwise: integer surfel counts per code
    d1 = surface_distances(gt, pred, spacing_mm=spacing, num_threads=1)
    d4 = surface_distances(gt, pred, spacing_mm=spacing, num_threads=4)
    assert all(np.array_equal(a, b) for a, b in zip(d1, d4))
    assert_same_distances(d4, reference.surface_distances(gt, pred, spacing_mm=spacing))


def test_integer_and_bool_masks_agree():
    rng = np.random.default_rng(2)
    gt, pred = blob_pair(rng, (8, 9, 10), 0.05, 1)
    expected = surface_dice(gt, pred, spacing_mm=(1, 1, 1), tolerance_mm=1)
    labels = gt.astype(np.int32) * 7
    assert surface_dice(labels, pred.astype(np.uint8) * 255, spacing_mm=(1, 1, 1), tolerance_mm=1) == expected
    assert surface_dice(np.asfortranarray(gt), pred, spacing_mm=(1, 1, 1), tolerance_mm=1) == expected


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: surface_dice(np.zeros((3, 3)), np.zeros((3, 3)), spacing_mm=(1, 1), tolerance_mm=1),
            "dtype",
        ),
        (
            lambda: surface_dice(
                np.zeros((3, 3), bool), np.zeros((3, 4), bool), spacing_mm=(1, 1), tolerance_mm=1
            ),
            "shapes differ",
        ),
        (
            lambda: surface_dice(
                np.zeros((3, 3), bool), np.zeros((3, 3), bool), spacing_mm=(1, 0), tolerance_mm=1
            ),
            "positive",
        ),
        (
            lambda: surface_dice(
                np.zeros((3, 3), bool), np.zeros((3, 3), bool), spacing_mm=(1, 1, 1), tolerance_mm=1
            ),
            "one value per axis",
        ),
        (
            lambda: surface_dice(
                np.zeros((3, 3), bool), np.zeros((3, 3), bool), spacing_mm=(1, 1), tolerance_mm=-1
            ),
            "tolerance",
        ),
        (
            lambda: surface_dice(np.zeros(3, bool), np.zeros(3, bool), spacing_mm=(1,), tolerance_mm=1),
            "2D or 3D",
        ),
        (
            lambda: surface_distances(
                np.zeros((2, 2), bool), np.zeros((2, 2), bool), spacing_mm=(1, 1), num_threads=0
            ),
            "num_threads",
        ),
    ],
)
def test_bad_input_raises_one_line_error(call, message):
    with pytest.raises(InputError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_core_checks_arguments_itself():
    core = _backend.core
    with pytest.raises(ValueError, match="shapes differ"):
        core.surface_dice_areas(np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.uint8), [1, 1], [1], 1)
    with pytest.raises(ValueError, match="bool or uint8"):
        core.surface_distances(np.zeros((2, 3), np.int16), np.zeros((2, 3), np.int16), [1, 1], 1)
    with pytest.raises(ValueError, match="positive"):
        core.surface_distances(np.zeros((2, 3), np.uint8), np.zeros((2, 3), np.uint8), [1, -1], 1)
    with pytest.raises(ValueError, match="C-contiguous"):
        core.surface_distances(np.zeros((4, 6), np.uint8)[:, ::2], np.zeros((4, 3), np.uint8), [1, 1], 1)


def test_fortran_order_masks_score_the_same():
    # NIfTI volumes arrive in Fortran order; the tiled C-order copy must not change any value
    rng = np.random.default_rng(11)
    for shape in [(13, 9, 70), (70, 5, 3), (31, 40)]:
        gt, pred = blob_pair(rng, shape, 0.05, 1)
        spacing = tuple(float(s) for s in rng.uniform(0.5, 2.0, size=len(shape)))
        expected = score_case(gt, pred, spacing_mm=spacing, tolerances_mm=(1.0, 2.0))
        for convert in (np.asfortranarray, lambda a: np.asfortranarray(a.astype(np.uint8) * 3)):
            got = score_case(convert(gt), convert(pred), spacing_mm=spacing, tolerances_mm=(1.0, 2.0))
            assert got == expected
        f = np.asfortranarray(gt)
        np.testing.assert_array_equal(_backend.core.c_order_mask(f), gt.astype(np.uint8))
