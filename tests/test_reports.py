"""Gap closed D_R and the sign test, on hand-derived numbers."""
import math

import numpy as np
import pytest
from scipy import stats

from fewshot_da.reports.gap import format_mean_std, gap_closed, pair_gap_closed, scan_gap_closed, sign_test


def test_gap_closed_hand_values():
    # baseline 0.6, oracle 0.9: a fine-tuned 0.75 closes half of the 0.3 gap
    assert gap_closed(0.75, 0.6, 0.9) == pytest.approx(0.5)
    assert gap_closed(0.6, 0.6, 0.9) == 0.0
    assert gap_closed(0.9, 0.6, 0.9) == pytest.approx(1.0)
    assert gap_closed(0.5, 0.6, 0.9) == pytest.approx(-1 / 3)  # worse than the baseline is negative
    assert math.isnan(gap_closed(0.7, 0.6, 0.6))


def test_pair_level_uses_means_not_mean_of_ratios():
    d, b, o = [0.8, 0.7], [0.6, 0.69], [0.9, 0.7]
    assert pair_gap_closed(d, b, o) == pytest.approx((0.75 - 0.645) / (0.8 - 0.645))
    per_scan = scan_gap_closed(d, b, o)
    assert per_scan[0] == pytest.approx(2 / 3) and per_scan[1] == pytest.approx(1.0)
    assert math.isnan(scan_gap_closed([0.5], [0.4], [0.4])[0])
    with pytest.raises(ValueError):
        pair_gap_closed([0.1], [0.1, 0.2], [0.3, 0.3])


def test_sign_test_matches_binomial():
    x = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    y = x - np.array([0.1, 0.1, 0.1, 0.1, 0.1, -0.1, 0.0])  # 5 positive, 1 negative, 1 tie dropped
    assert sign_test(x, y) == pytest.approx(stats.binomtest(5, 6, 0.5).pvalue)
    assert sign_test([1, 2], [1, 2]) == 1.0


def test_format_shows_nan_count():
    assert format_mean_std([0.8, 0.9, float("nan")]) == "0.850 ± 0.050 (n=3, 1 NaN)"
    assert format_mean_std([0.5]) == "0.500 ± 0.000 (n=1)"
