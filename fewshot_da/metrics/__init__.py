"""Segmentation metrics: surface Dice at a tolerance (mm), HD95, ASSD, Dice, pixel error, adjusted Rand index."""

from fewshot_da.metrics.overlap import adjusted_rand_index, dice, pixel_error
from fewshot_da.metrics.scoring import METRICS, score_case, surface_dice_key
from fewshot_da.metrics.summary import summarize
from fewshot_da.metrics.surface import (
    DistanceSummary,
    SurfaceDistances,
    assd,
    assd_from,
    assd_from_summary,
    distance_summary,
    hd95,
    hd_from,
    hd_from_summary,
    surface_dice,
    surface_dice_cuda,
    surface_dice_from,
    surface_dice_many,
    surface_distances,
)

__all__ = [
    "METRICS",
    "DistanceSummary",
    "SurfaceDistances",
    "adjusted_rand_index",
    "assd",
    "assd_from",
    "assd_from_summary",
    "dice",
    "distance_summary",
    "hd95",
    "hd_from",
    "hd_from_summary",
    "pixel_error",
    "score_case",
    "summarize",
    "surface_dice",
    "surface_dice_cuda",
    "surface_dice_from",
    "surface_dice_key",
    "surface_dice_many",
    "surface_distances",
]
