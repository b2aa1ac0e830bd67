"""Predict cached volumes with a model and score them against their masks (one row per scan), and aggregate."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from ..metrics import adjusted_rand_index, pixel_error, score_case
from ..metrics.summary import summarize
from ..models import pad_multiple
from ..predict import predict_volume

FLAG_COLUMNS = ("empty_gt", "empty_pred")


def score_prediction(volume, pred: np.ndarray, *, tolerances_mm=(1.0,)) -> dict:
    """{id, domain, dice, surface_dice_<tol>mm, hd95_mm, assd_mm[, pixel_error_pct, ari], empty_gt, empty_pred} of
    one predicted (S, H, W) mask in the volume's cached grid. One-slice volumes (2D images) are scored as 2D
    masks and also get the pixel error in percent (as `eval`) and the adjusted Rand index."""
    gt = np.asarray(volume.mask)
    spacing = tuple(float(s) for s in volume.spacing_mm)
    two_d = gt.shape[0] == 1
    if two_d:
        gt, pred, spacing = gt[0], pred[0], spacing[1:]
    return score_masks(volume.id, volume.domain, gt, pred, spacing, tolerances_mm=tolerances_mm, two_d=two_d)


def score_masks(case_id: str, domain: str, gt: np.ndarray, pred: np.ndarray, spacing_mm, *, tolerances_mm=(1.0,),
                two_d: bool = False) -> dict:
    """The row of `score_prediction` for two binary masks of one grid with voxel spacing `spacing_mm` (mm)."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    scores = score_case(gt, pred, spacing_mm=tuple(spacing_mm), tolerances_mm=tuple(tolerances_mm))
    row = {"id": case_id, "domain": domain, **{k: float(v) for k, v in scores.items()}}
    if two_d:
        row["pixel_error_pct"] = 100.0 * float(pixel_error(gt, pred))
        row["ari"] = float(adjusted_rand_index(gt, pred))
    row["empty_gt"] = int(not gt.any())
    row["empty_pred"] = int(not np.asarray(pred).any())
    return row


def score_volumes(model, arch: str, volumes: Sequence, *, tolerances_mm=(1.0,), batch_size=None,
                  on_prediction: Optional[Callable] = None, progress: bool = True) -> list:
    """Predict and score every volume (rows as `score_prediction`). on_prediction(volume, mask) sees every
    predicted (S, H, W) uint8 mask, e.g. to write it to disk."""
    from tqdm.auto import tqdm

    rows = []
    for volume in tqdm(volumes, desc="predict", unit="scan", disable=not progress or len(volumes) < 2):
        pred = predict_volume(model, volume.image, pad_multiple=pad_multiple(arch), batch_size=batch_size)
        if on_prediction is not None:
            on_prediction(volume, pred)
        rows.append(score_prediction(volume, pred, tolerances_mm=tolerances_mm))
    return rows


def aggregate_scores(rows: Sequence[dict]) -> dict:
    """Per metric `summarize` over the cases with a non-empty ground truth, plus the empty-mask cases apart:
    {'metrics': {name: {mean, sd, n, n_nan}}, 'empty_gt': {'n', 'false_positive_rate'}}.

    Cases whose mask is empty (e.g. BUSI's normal images) would mix Dice 1 or 0, NaN surface scores and inf HD95
    into the means, so they are reported as a count and the fraction with a non-empty prediction instead.
    """
    scored = [r for r in rows if not r.get("empty_gt")]
    empty = [r for r in rows if r.get("empty_gt")]
    names = [k for k in (rows[0] if rows else {}) if k not in ("id", "domain") + FLAG_COLUMNS]
    return {
        "metrics": {k: summarize([r[k] for r in scored]) for k in names},
        "empty_gt": {"n": len(empty),
                     "false_positive_rate": float(np.mean([not r["empty_pred"] for r in empty])) if empty else None},
    }
