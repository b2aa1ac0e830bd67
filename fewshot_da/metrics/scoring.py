"""Per-case scores: Dice, surface Dice at each tolerance, HD95 and ASSD from one distance computation."""

from __future__ import annotations

from collections.abc import Sequence

from fewshot_da.metrics.overlap import dice
from fewshot_da.metrics.surface import assd_from, hd_from, surface_dice_from, surface_distances


def surface_dice_key(tolerance_mm: float) -> str:
    """Result key for a tolerance: 1.0 -> 'surface_dice_1mm', 0.5 -> 'surface_dice_0.5mm'."""
    return f"surface_dice_{float(tolerance_mm):g}mm"


def score_case(
    gt,
    pred,
    *,
    spacing_mm: Sequence[float],
    tolerances_mm: Sequence[float] = (1.0,),
    num_threads: int | None = None,
) -> dict:
    """{'dice', 'surface_dice_<tol>mm' per tolerance, 'hd95_mm', 'assd_mm'} for one gt/pred pair.

    Definitions and edge cases as in `dice`, `surface_dice`, `hd95`, `assd`; the surface distances are
    computed once and reduced for every tolerance.
    """
    distances = surface_distances(gt, pred, spacing_mm=spacing_mm, num_threads=num_threads)
    scores = {"dice": dice(gt, pred)}
    for tolerance in tolerances_mm:
        scores[surface_dice_key(tolerance)] = surface_dice_from(distances, float(tolerance))
    scores["hd95_mm"] = hd_from(distances, 95.0)
    scores["assd_mm"] = assd_from(distances)
    return scores
