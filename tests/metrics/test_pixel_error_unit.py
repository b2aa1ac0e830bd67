"""pixel_error has one unit everywhere: percent of pixels that differ, in a column named pixel_error_pct."""
from types import SimpleNamespace

import numpy as np
import pytest

from fewshot_da.experiments.results import rows_from_summary
from fewshot_da.experiments.scoring import score_prediction
from fewshot_da.metrics import pixel_error, score_case


def test_train_adapt_scores_and_eval_share_the_percent_column():
    gt = np.zeros((1, 8, 8), np.uint8)
    gt[0, 2:6, 2:6] = 1
    pred = np.zeros_like(gt)
    pred[0, 2:6, 2:4] = 1  # 8 of 64 pixels differ: 12.5 %
    volume = SimpleNamespace(id="a", domain="d", mask=gt, spacing_mm=(1.0, 1.0, 1.0))
    row = score_prediction(volume, pred)  # what train/adapt/predict score and print
    assert "pixel_error" not in row and row["pixel_error_pct"] == pytest.approx(12.5)
    assert row["pixel_error_pct"] == pytest.approx(100 * pixel_error(gt[0], pred[0]))
    eval_row = score_case(gt[0], pred[0], spacing_mm=(1.0, 1.0), tolerances_mm=(1.0,), metrics=["pixel_error"])
    assert eval_row["pixel_error_pct"] == pytest.approx(row["pixel_error_pct"])  # what eval prints
    results = rows_from_summary({"spec": {}, "scores": [row]}, "run")  # results.csv keeps the unit's name
    assert results[0]["pixel_error_pct"] == pytest.approx(12.5) and "pixel_error" not in results[0]
