"""Intervals, Wilcoxon, TOST and the SpotTUnet comparison against scipy and hand values; D_R on the synthetic study."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from fewshot_da.reports.gap import pair_gaps, run_gaps
from fewshot_da.reports.stats import (
    cluster_bootstrap_interval,
    compare_with_best,
    gap_by_budget,
    pair_scores,
    spottune_tests,
    t_interval,
    tost_ind,
    wilcoxon_greater,
    winners,
)
from tests.reports.test_collect import BUDGETS, TRUE_GAP, synthetic_rows


def test_t_interval_by_hand():
    # values 1, 2, 3: mean 2, sd 1, se 1/sqrt(3); t_{0.975, 2} = 4.302653
    iv = t_interval([1.0, 2.0, 3.0, float("nan")])
    assert iv.mean == 2.0 and iv.n == 3
    assert iv.high - iv.mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert iv.mean - iv.low == pytest.approx(iv.high - iv.mean)
    one = t_interval([0.4])
    assert one.mean == 0.4 and math.isnan(one.low) and one.n == 1


def test_bootstrap_is_seeded_and_brackets_the_mean():
    groups = [[0.1, 0.2], [0.5, 0.6], [0.3, 0.35], [0.8, 0.7], [0.4, 0.5]]
    a = cluster_bootstrap_interval(groups, n_resamples=2000, seed=3)
    b = cluster_bootstrap_interval(groups, n_resamples=2000, seed=3)
    assert a == b
    assert a.mean == pytest.approx(np.mean([0.15, 0.55, 0.325, 0.75, 0.45]))
    assert a.low < a.mean < a.high and a.n == 5
    # the bootstrap is narrower than the data range and wider than nothing
    assert 0.15 < a.low and a.high < 0.75


def test_wilcoxon_greater_matches_scipy():
    x = np.array([0.8, 0.75, 0.9, 0.7, 0.82, 0.77, 0.85])
    y = x - np.array([0.05, 0.02, -0.01, 0.04, 0.03, 0.06, 0.01])
    assert wilcoxon_greater(x, y) == pytest.approx(sps.wilcoxon(x - y, alternative="greater").pvalue)
    assert wilcoxon_greater(y, x) > 0.9
    assert wilcoxon_greater(x, x) == 1.0


def test_tost_is_two_shifted_one_sided_t_tests():
    rng = np.random.default_rng(0)
    x, y = 0.78 + 0.02 * rng.standard_normal(12), 0.775 + 0.02 * rng.standard_normal(10)
    low, high = -0.01, 0.01
    # H0 diff <= low is a one-sided pooled t-test of (x - low) against y; H0 diff >= high of (x - high) against y
    p_low = sps.ttest_ind(x - low, y, alternative="greater").pvalue
    p_high = sps.ttest_ind(x - high, y, alternative="less").pvalue
    assert tost_ind(x, y, low, high) == pytest.approx(max(p_low, p_high))
    # a wide margin shows equivalence, a tiny one does not
    assert tost_ind(x, y, -0.2, 0.2) < 1e-6 and tost_ind(x, y, -1e-4, 1e-4) > 0.4


def test_compare_with_best_picks_the_higher_mean_and_tost_only_when_needed():
    cand = [0.80, 0.82, 0.79, 0.85, 0.81, 0.83]
    first = [0.78, 0.80, 0.77, 0.83, 0.79, 0.81]   # 0.02 below the candidate on every pair
    all_ = [0.70, 0.71, 0.69, 0.72, 0.70, 0.71]
    r = compare_with_best(cand, {"all": all_, "first": first})
    assert r["best"] == "first" and r["n_pairs"] == 6
    assert r["wilcoxon_p"] == pytest.approx(1 / 64)  # all 6 differences positive: exact p = 1/2**6
    assert math.isnan(r["tost_p"])
    same = compare_with_best(first, {"all": all_, "first": first})
    assert same["wilcoxon_p"] == 1.0
    eps = 0.25 * np.std(first)
    assert same["margin"] == pytest.approx(eps)
    assert same["tost_p"] == pytest.approx(tost_ind(first, first, -eps, eps))


def test_synthetic_study_recovers_the_true_gap_and_winners():
    rows = synthetic_rows(noise=0.005)
    gaps = run_gaps(rows, "surface_dice_1mm")
    summary = {(r["method"], r["budget"]): r for r in gap_by_budget(gaps)}
    for method, true in TRUE_GAP.items():
        for b, budget in enumerate(BUDGETS):
            r = summary[method, budget]
            assert r["n_pairs"] == 6 and r["n_runs"] == 12
            assert r["ci_low"] < r["mean"] < r["ci_high"]
            assert r["mean"] == pytest.approx(true[b], abs=0.03)
    counts, _ = winners(pair_gaps(gaps), ["all", "first", "last"], alpha=0.1)
    wins = {(r["budget"], r["method"]): (r["wins"], r["significant_wins"]) for r in counts}
    # first beats all by .45 and .1 of the gap at 1/4 and 1 scan (5 test scans: p = .0625), all wins at 3 scans
    # (3 test scans: the smallest two-sided sign-test p is .25, so never significant)
    assert wins["1/4", "first"] == (6, 6) and wins["1", "first"] == (6, 6)
    assert wins["3", "all"] == (6, 0) and wins["3", "last"] == (0, 0)


def test_bootstrap_option_and_bad_ci():
    gaps = run_gaps(synthetic_rows(), "surface_dice_1mm")
    t = {(r["method"], r["budget"]): r for r in gap_by_budget(gaps, ci="t")}
    boot = {(r["method"], r["budget"]): r for r in gap_by_budget(gaps, ci="bootstrap", seed=1)}
    for key in t:
        assert boot[key]["mean"] == pytest.approx(t[key]["mean"])
        assert boot[key]["ci_low"] < boot[key]["mean"] < boot[key]["ci_high"]
    with pytest.raises(ValueError):
        gap_by_budget(gaps, ci="normal")


def test_spottune_tests_on_the_synthetic_study():
    rows = synthetic_rows(spottune=True)
    scores = pair_scores(rows, "surface_dice_1mm")
    assert len(scores["dart20", "spottune", "1"]) == 6
    tests = {r["budget"]: r for r in spottune_tests(scores)}
    # spottune closes 5 points more of the gap than 'first' on every pair: the Wilcoxon p is exact 1/64
    assert tests["1/4"]["best"] == "first" and tests["1/4"]["wilcoxon_p"] == pytest.approx(1 / 64)
    # at 3 scans 'all' (D_R .9) is better than spottune (.7): Wilcoxon fails and TOST runs
    assert tests["3"]["best"] == "all" and tests["3"]["wilcoxon_p"] > 0.5 and tests["3"]["tost_p"] > 0.5


def test_bootstrap_of_single_value_groups_agrees_with_scipy():
    values = np.random.default_rng(5).normal(0.5, 0.1, 30)
    ours = cluster_bootstrap_interval([[v] for v in values], n_resamples=20000, seed=0)
    ref = sps.bootstrap((values,), np.mean, n_resamples=20000, method="percentile", random_state=0)
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=0.005)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=0.005)
