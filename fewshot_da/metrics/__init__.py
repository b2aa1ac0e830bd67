"""Segmentation metrics: surface Dice at a tolerance (mm), HD95, ASSD, Dice, pixel error, adjusted Rand index."""

from fewshot_da.metrics.overlap import adjusted_rand_index, dice, pixel_error
from fewshot_da.metrics.scoring import score_case, surface_dice_key
from fewshot_da.metrics.surface import (
    SurfaceDistances,
    assd,
    assd_from,
    hd95,
    hd_from,
    surface_dice,
    surface_dice_cuda,
    surface_dice_from,
    surface_dice_many,
    surface_distances,
)

__all__ = [
    "SurfaceDistances",
    "adjusted_rand_index",
    "assd",
    "assd_from",
    "dice",
    "hd95",
    "hd_from",
    "pixel_error",
    "score_case",
    "surface_dice",
    "surface_dice_cuda",
    "surface_dice_from",
    "surface_dice_key",
    "surface_dice_many",
    "surface_distances",
]
