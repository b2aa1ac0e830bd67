"""Predict cached volumes with a model and score them against their masks (one row per scan)."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..metrics import score_case
from ..models import pad_multiple
from ..predict import predict_volume


def score_volumes(model, arch: str, volumes: Sequence, *, tolerances_mm=(1.0,), batch_size=None,
                  on_prediction: Optional[Callable] = None, progress: bool = True) -> list:
    """Rows {id, domain, dice, surface_dice_<tol>mm, hd95_mm, assd_mm} scored in each volume's cached grid.

    One-slice volumes (2D images) are scored as 2D masks. on_prediction(volume, mask) sees every predicted
    (S, H, W) uint8 mask, e.g. to write it to disk.
    """
    from tqdm.auto import tqdm

    rows = []
    for volume in tqdm(volumes, desc="predict", unit="scan", disable=not progress or len(volumes) < 2):
        pred = predict_volume(model, volume.image, pad_multiple=pad_multiple(arch), batch_size=batch_size)
        if on_prediction is not None:
            on_prediction(volume, pred)
        gt = np.asarray(volume.mask)
        spacing = tuple(float(s) for s in volume.spacing_mm)
        if gt.shape[0] == 1:  # a 2D image stored as a one-slice volume
            gt, pred, spacing = gt[0], pred[0], spacing[1:]
        scores = score_case(gt, pred, spacing_mm=spacing, tolerances_mm=tuple(tolerances_mm))
        rows.append({"id": volume.id, "domain": volume.domain, **{k: float(v) for k, v in scores.items()}})
    return rows


def write_scores(rows: Sequence[dict], path) -> Path:
    """CSV with one row per scan; NaN written as 'nan' (never dropped)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not rows:
        path.write_text("id,domain\n")
        return path
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) and math.isfinite(v) else v)
                             for k, v in row.items()})
    return path
