"""Per-case scores in one kernel call, each metric by its fastest path: Dice and pixel error from voxel counts,
surface Dice by the tolerance stencil, or, when HD95 / ASSD are asked for, from their one exact distance pass."""

from __future__ import annotations

import math
from collections.abc import Sequence

from fewshot_da import _backend
from fewshot_da.errors import InputError
from fewshot_da.metrics.overlap import adjusted_rand_index
from fewshot_da.metrics.surface import (
    DistanceSummary,
    _prepare,
    _ratio,
    _threads,
    _tolerances,
    assd_from_summary,
    hd_from_summary,
)

# Metric names accepted by `score_case(metrics=...)` and `fewshot-da eval --metrics`, in output order.
METRICS = ("dice", "sdsc", "hd95", "assd", "pixel_error", "ari")
DEFAULT_METRICS = ("dice", "sdsc", "hd95", "assd")


def check_tolerances(tolerances_mm) -> tuple:
    """Surface Dice tolerances in mm: each finite and > 0 (one validator for every verb)."""
    values = tuple(float(t) for t in tolerances_mm)
    for t in values:
        if not math.isfinite(t) or t <= 0:
            raise InputError(f"--tolerance {t:g}: a tolerance must be a finite number of mm > 0")
    if not values:
        raise InputError("--tolerance: give at least one tolerance in mm")
    return values


def surface_dice_key(tolerance_mm: float) -> str:
    """Result key for a tolerance: 1.0 -> 'surface_dice_1mm', 0.5 -> 'surface_dice_0.5mm'."""
    return f"surface_dice_{float(tolerance_mm):g}mm"


def check_metrics(metrics: Sequence[str] | None) -> tuple[str, ...]:
    """The requested metric names in METRICS order (None -> DEFAULT_METRICS); InputError naming a bad one."""
    if metrics is None:
        return DEFAULT_METRICS
    names = [m.strip().lower() for m in metrics if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise InputError(f"--metrics: unknown metric {unknown[0] if unknown else '(none)'!r}; "
                         f"choose from {','.join(METRICS)}")
    return tuple(m for m in METRICS if m in names)


def result_keys(metrics: Sequence[str], tolerances_mm: Sequence[float]) -> list[str]:
    """Keys of `score_case`'s dict for these metric names and tolerances, in order."""
    keys = {"dice": ["dice"], "sdsc": [surface_dice_key(t) for t in tolerances_mm], "hd95": ["hd95_mm"],
            "assd": ["assd_mm"], "pixel_error": ["pixel_error_pct"], "ari": ["ari"]}
    return [k for m in check_metrics(metrics) for k in keys[m]]


def score_case(
    gt,
    pred,
    *,
    spacing_mm: Sequence[float],
    tolerances_mm: Sequence[float] = (1.0,),
    num_threads: int | None = None,
    metrics: Sequence[str] | None = None,
) -> dict:
    """{'dice', 'surface_dice_<tol>mm' per tolerance, 'hd95_mm', 'assd_mm'} for one gt/pred pair.

    `metrics` picks what is computed (names in METRICS; default DEFAULT_METRICS); 'pixel_error' adds
    'pixel_error_pct' (% of voxels that differ) and 'ari' the adjusted Rand index. Definitions and edge
    cases as in `dice`, `surface_dice`, `hd95`, `assd`, `pixel_error`, `adjusted_rand_index`. Surface Dice
    uses the stencil kernel for all tolerances at once; HD95 and ASSD share one exact distance pass, run
    only when one of them is requested.
    """
    wanted = check_metrics(metrics)
    gt_u8, pred_u8, spacing = _prepare(gt, pred, spacing_mm)
    tolerances = _tolerances(tolerances_mm) if "sdsc" in wanted else []
    with_distances = "hd95" in wanted or "assd" in wanted
    core = _backend.core.case_scores(gt_u8, pred_u8, spacing, tolerances, with_distances, 95.0, _threads(num_threads))
    n_gt, n_pred, n_both = core["gt_voxels"], core["pred_voxels"], core["both_voxels"]
    scores: dict = {}
    if "dice" in wanted:  # as overlap.dice: both empty -> 1.0
        scores["dice"] = 1.0 if n_gt + n_pred == 0 else 2.0 * n_both / (n_gt + n_pred)
    for tolerance, row in zip(tolerances, core["surface_dice_areas"]):
        scores[surface_dice_key(tolerance)] = _ratio(row)
    if with_distances:
        summary = DistanceSummary(**core["distances"])
        if "hd95" in wanted:
            scores["hd95_mm"] = hd_from_summary(summary)
        if "assd" in wanted:
            scores["assd_mm"] = assd_from_summary(summary)
    if "pixel_error" in wanted:  # as overlap.pixel_error, in percent
        scores["pixel_error_pct"] = 100.0 * ((n_gt + n_pred - 2 * n_both) / gt_u8.size)
    if "ari" in wanted:
        scores["ari"] = adjusted_rand_index(gt, pred)
    return scores
