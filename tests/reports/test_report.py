"""Gap closed D_R and the sign test, on hand-derived numbers."""
import math

import numpy as np
import pytest
from scipy import stats

from fewshot_da.reports.gap import (
    format_mean_std,
    gap_closed,
    method_label,
    pair_gap_closed,
    pair_gaps,
    run_gaps,
    scan_gap_closed,
    sign_test,
)
from fewshot_da.reports.stats import winners


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


# ---- D_R and winners from results rows, derived by hand -------------------------------------------------------

def _row(source, target, strategy, layers, case, sdsc, seed="0", budget="1"):
    if strategy in ("baseline", "oracle"):
        budget = ""
    return {"run": f"{strategy}{layers}{source}{target}{seed}", "arch": "dart20", "source": source, "target": target,
            "strategy": strategy, "layers": layers, "budget": budget, "seed": seed, "fold": "", "case": case,
            "surface_dice_1mm": sdsc}


def _two_pair_table():
    """Pair A->B on 3 scans, pair B->A on 5 scans; methods first and last at budget '1'.

    A->B: baseline .5 .6 .4, oracle .9 .8 .8, first .7 .7 .6, last .6 .65 .5.
      means: D_B = .5, D_O = 2.5/3, first = 2/3 -> D_R = (1/6)/(1/3) = 0.5; last = 1.75/3 -> (1/12)/(1/3) = 0.25.
      scan-level first: .2/.4, .1/.2, .2/.4 = 0.5 each; last: .1/.4, .05/.2, .1/.4 = 0.25 each.
      first wins; 3 positive differences: sign test p = 2 * 0.5**3 = 0.25 -> not significant at 0.1.
    B->A: baseline .4, oracle .8 on 5 scans; last .7 (D_R .75), first .5 (D_R .25).
      last wins; 5 positive differences: p = 2 * 0.5**5 = 0.0625 -> significant at 0.1, not at 0.05.
    """
    rows = []
    for case, b, o, f, la in zip(("b1", "b2", "b3"), (.5, .6, .4), (.9, .8, .8), (.7, .7, .6), (.6, .65, .5)):
        rows += [_row("A", "B", "baseline", "", case, b), _row("B", "B", "oracle", "", case, o),
                 _row("A", "B", "freeze", "first", case, f), _row("A", "B", "freeze", "last", case, la)]
    for case in ("a1", "a2", "a3", "a4", "a5"):
        rows += [_row("B", "A", "baseline", "", case, .4), _row("A", "A", "oracle", "", case, .8),
                 _row("B", "A", "freeze", "first", case, .5), _row("B", "A", "freeze", "last", case, .7)]
    return rows


def test_run_gaps_by_hand():
    gaps = {(g.source, g.method): g for g in run_gaps(_two_pair_table(), "surface_dice_1mm")}
    assert gaps["A", "first"].gap == pytest.approx(0.5)
    assert gaps["A", "last"].gap == pytest.approx(0.25)
    np.testing.assert_allclose(gaps["A", "first"].scan_gaps, [0.5, 0.5, 0.5])
    np.testing.assert_allclose(gaps["A", "last"].scan_gaps, [0.25, 0.25, 0.25])
    assert gaps["B", "last"].gap == pytest.approx(0.75) and gaps["B", "first"].gap == pytest.approx(0.25)
    assert gaps["A", "first"].cases == ("b1", "b2", "b3") and gaps["A", "first"].n_dropped == 0


def test_winners_by_hand():
    pairs = pair_gaps(run_gaps(_two_pair_table(), "surface_dice_1mm"))
    counts, decisions = winners(pairs, ["first", "last"], alpha=0.1)
    by_pair = {d["source"]: d for d in decisions}
    assert by_pair["A"]["winner"] == "first" and by_pair["A"]["p_value"] == pytest.approx(0.25)
    assert not by_pair["A"]["significant"]
    assert by_pair["B"]["winner"] == "last" and by_pair["B"]["p_value"] == pytest.approx(0.0625)
    assert by_pair["B"]["significant"]
    got = {r["method"]: (r["wins"], r["significant_wins"], r["n_pairs"]) for r in counts}
    assert got == {"first": (1, 0, 2), "last": (1, 1, 2)}
    strict, _ = winners(pairs, ["first", "last"], alpha=0.05)
    assert {r["method"]: r["significant_wins"] for r in strict} == {"first": 0, "last": 0}


def test_missing_baseline_cases_are_dropped_and_counted():
    rows = [r for r in _two_pair_table() if not (r["strategy"] == "baseline" and r["case"] == "b3")]
    gaps = {(g.source, g.method): g for g in run_gaps(rows, "surface_dice_1mm")}
    g = gaps["A", "first"]
    assert g.cases == ("b1", "b2") and g.n_dropped == 1
    # means over b1, b2 only: D = .7, D_B = .55, D_O = .85 -> D_R = .15 / .3
    assert g.gap == pytest.approx(0.5)


def test_seeds_are_averaged_within_a_pair():
    rows = _two_pair_table()
    # a second seed of A->B first at .6 .65 .5 (the 'last' scores: D_R .25) -> pair mean of .5 and .25
    rows += [_row("A", "B", "freeze", "first", c, v, seed="1") for c, v in zip(("b1", "b2", "b3"), (.6, .65, .5))]
    pairs = {(p.source, p.method): p for p in pair_gaps(run_gaps(rows, "surface_dice_1mm"))}
    assert pairs["A", "first"].gap == pytest.approx(0.375)
    assert pairs["A", "first"].scan_gaps["b2"] == pytest.approx(0.375)
    assert sorted(pairs["A", "first"].replicate_gaps) == pytest.approx([0.25, 0.5])


def test_method_labels():
    assert method_label("freeze", "first") == "first"
    assert method_label("spottune", "") == "spottune"
    assert method_label("gradual", "all") == "gradual:all"
