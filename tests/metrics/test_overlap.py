"""Dice, pixel error and adjusted Rand index: hand-derived values, conventions and a pair-counting oracle."""

import numpy as np
import pytest

from fewshot_da.errors import InputError
from fewshot_da.metrics import adjusted_rand_index, dice, pixel_error, reference, score_case


def test_dice_hand_derived_and_empty():
    gt = np.array([[1, 1, 0, 0]], bool)
    pred = np.array([[0, 1, 1, 1]], bool)
    assert dice(gt, pred) == pytest.approx(2 * 1 / (2 + 3))  # |A and B| = 1, |A| = 2, |B| = 3
    assert dice(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0  # dpipe convention
    assert dice(gt, np.zeros_like(gt)) == 0.0
    assert dice(gt.astype(np.int64) * 3, gt) == 1.0  # nonzero = foreground


def test_pixel_error():
    gt = np.array([[1, 1, 0, 0]], bool)
    pred = np.array([[0, 1, 1, 1]], bool)
    assert pixel_error(gt, pred) == 0.75  # three of four pixels disagree
    assert pixel_error(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 0.0
    with pytest.raises(InputError):
        pixel_error(np.zeros((0,), bool), np.zeros((0,), bool))


def test_adjusted_rand_index_hand_derived():
    # labelings [0,0,1,1] vs [0,0,1,2]: 6 pairs; same-same 1 (0-1), same-diff 1 (2-3), diff-same 0,
    # diff-diff 4 -> ARI = 2 (1*4 - 1*0) / ((1+1)(1+4) + (1+0)(0+4)) = 8 / 14
    assert adjusted_rand_index(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 2])) == pytest.approx(8 / 14)
    assert (
        adjusted_rand_index(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0])) == 1.0
    )  # label names do not matter
    both_empty = np.zeros((4, 4), bool)
    assert adjusted_rand_index(both_empty, both_empty) == 1.0
    one = both_empty.copy()
    one[1:3, 1:3] = True
    assert adjusted_rand_index(one, both_empty) == 0.0


def test_adjusted_rand_index_matches_pair_counting():
    rng = np.random.default_rng(0)
    for _ in range(10):
        shape = (int(rng.integers(2, 9)), int(rng.integers(2, 9)))
        gt = rng.integers(0, rng.integers(1, 4), size=shape)
        pred = rng.random(shape) < rng.random()
        assert adjusted_rand_index(gt, pred) == pytest.approx(
            reference.adjusted_rand_index_pairs(gt, pred), abs=1e-12
        )


def test_adjusted_rand_index_large_volume_no_overflow():
    gt = np.zeros((200, 200, 100), bool)
    gt[50:150, 50:150, 20:80] = True
    pred = np.roll(gt, 3, axis=0)
    value = adjusted_rand_index(gt, pred)
    assert 0.9 < value < 1.0


def test_shape_mismatch_and_float_masks_raise():
    with pytest.raises(InputError, match="shapes differ"):
        dice(np.zeros((2, 2), bool), np.zeros((2, 3), bool))
    with pytest.raises(InputError, match="dtype"):
        adjusted_rand_index(np.zeros((2, 2)), np.zeros((2, 2)))


def test_score_case_keys():
    gt = np.zeros((8, 8, 8), bool)
    gt[2:6, 2:6, 2:6] = True
    scores = score_case(gt, gt, spacing_mm=(1, 1, 1), tolerances_mm=(1, 2.5))
    assert list(scores) == ["dice", "surface_dice_1mm", "surface_dice_2.5mm", "hd95_mm", "assd_mm"]
    assert scores["dice"] == 1.0 and scores["surface_dice_1mm"] == 1.0 and scores["hd95_mm"] == 0.0
