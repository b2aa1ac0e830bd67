"""recommend's validation protocol and statistics (issue 21 §0, issue 22): one scan split into interleaved halves,
intervals inside the metric's range, no P(best) or "high" from too few folds or with a tie, a learning-curve band
that widens at a parameter bound, the wording of the advice, and refusals of all-NaN scores and of the source
model's own training scans."""
import math

import numpy as np
import pytest

from fewshot_da.errors import InputError
from fewshot_da.recommend.folds import curve_folds, labelled_parts, validation_folds
from fewshot_da.recommend.learning_curve import bootstrap, fit_curve
from fewshot_da.recommend.ranking import decide, probability_best, rank_candidates


# --- 1. one scan: interleaved halves ---------------------------------------------------------------------------

def test_one_scan_is_split_into_interleaved_halves_that_span_the_scan():
    parts = labelled_parts([40], 4)  # labelled comb 0, 4, ..., 36
    a, b = validation_folds(parts, one_scan="interleave")
    assert [a.name, b.name] == ["comb-1", "comb-2"]
    assert a.train == b.test and a.test == b.train
    assert a.train[0].slices == (0, 8, 16, 24, 32) and a.test[0].slices == (4, 12, 20, 28, 36)
    # both halves cover the same anatomy: each reaches within one labelled interval of both ends of the comb
    for half in (a.train[0].slices, a.test[0].slices):
        assert half[0] <= 4 and half[-1] >= 32
    # each half is a regular comb, so it is scored as a volume with mm geometry (twice the labelled interval)
    assert np.all(np.diff(a.test[0].slices) == 8)
    # the learning curve's smaller sets thin the training comb further
    assert [f.train[0].slices for f in curve_folds(a, points=3)] == [(0, 8, 16, 24, 32), (0, 16, 32), (0, 32)]


def test_the_slab_protocol_stays_available_and_a_bad_name_is_refused():
    a, b = validation_folds(labelled_parts([40], 4), one_scan="slab")
    assert [a.name, b.name] == ["slab-1", "slab-2"]
    assert a.train[0].slices == (0, 4, 8, 12, 16) and a.test[0].slices == (20, 24, 28, 32, 36)
    with pytest.raises(InputError, match="--one-scan-folds 'halves'"):
        validation_folds(labelled_parts([40], 4), one_scan="halves")
    # several scans: folds over scans whatever the one-scan protocol
    assert [f.name for f in validation_folds(labelled_parts([8, 8], 1), one_scan="slab")] == ["fold-1", "fold-2"]


def test_an_odd_comb_of_three_slices_gives_halves_of_two_and_one():
    a, b = validation_folds(labelled_parts([12], 4), one_scan="interleave")  # the phantoms' 1/4: slices 0, 4, 8
    assert a.train[0].slices == (0, 8) and a.test[0].slices == (4,)
    assert b.train[0].slices == (4,) and b.test[0].slices == (0, 8)


# --- 2. statistics at 2-3 folds --------------------------------------------------------------------------------

def test_intervals_stay_inside_the_metric_range():
    scores = {"a": [0.97, 0.99], "b": [0.30, 0.05]}  # t with 1 df: 0.98 +- 12.7 * 0.0071 reaches past 1
    rows = {r["candidate"]: r for r in rank_candidates(scores, metric="surface_dice_1mm")}
    assert 0.0 <= rows["a"]["low"] <= rows["a"]["mean"] <= rows["a"]["high"] <= 1.0
    assert rows["a"]["high"] == 1.0 and rows["b"]["low"] == 0.0
    ari = {r["candidate"]: r for r in rank_candidates({"a": [-0.9, 0.2], "b": [0.0, 0.1]}, metric="ari")}
    assert ari["a"]["low"] == -1.0
    choice = decide(rank_candidates(scores, metric="dice"), scores, metric="dice")
    assert -1.0 <= choice["margin"]["low"] and choice["margin"]["high"] <= 1.0


def test_no_p_best_from_a_bootstrap_over_two_folds():
    scores = {"a": [0.9, 0.8], "b": [0.5, 0.4], "c": [0.6, 0.3]}
    assert probability_best(scores) == {"a": None, "b": None, "c": None}
    rows = rank_candidates(scores)
    assert all(r["p_best"] is None for r in rows)
    choice = decide(rows, scores)
    assert choice["p_best"] is None and choice["confidence"] != "high"
    assert choice["confidence"] == "moderate"  # the top beats every other candidate on both folds
    assert any("too few for P(best)" in note for note in choice["notes"])
    split = {"a": [0.9, 0.4], "b": [0.5, 0.6]}
    assert decide(rank_candidates(split), split)["confidence"] == "low"
    # from 3 folds on, the bootstrap is reported
    assert probability_best({"a": [0.9, 0.8, 0.85], "b": [0.5, 0.4, 0.45]})["a"] == pytest.approx(1.0)


def test_never_high_confidence_while_another_candidate_is_tied():
    # b, the runner-up by mean, is clearly behind a on every fold; c is further behind on average but wins one
    # fold by far: P(best) of a stays >= 0.9 (c needs 3 of 5 draws of that fold) while the paired t interval of
    # a - c reaches 0
    a = np.array([0.80, 0.82, 0.84, 0.86, 0.88])
    scores = {"a": list(a), "b": list(a - [0.030, 0.031, 0.029, 0.030, 0.031]),
              "c": list(a - [0.10, 0.10, 0.10, 0.10, -0.14])}
    rows = rank_candidates(scores)
    assert [r["candidate"] for r in rows] == ["a", "b", "c"] and rows[0]["p_best"] >= 0.9
    choice = decide(rows, scores)
    assert choice["margin"]["low"] > 0  # the runner-up is not tied
    assert choice["tied_with"] == ["c"]
    assert choice["confidence"] == "moderate"


def test_a_nan_fold_is_flagged_and_caps_the_confidence():
    scores = {"a": [0.90, 0.91, float("nan"), 0.92, 0.90], "b": [0.50, 0.52, 0.51, 0.50, 0.53]}
    rows = rank_candidates(scores)
    assert rows[0]["candidate"] == "a" and rows[0]["n_nan"] == 1 and rows[1]["n_nan"] == 0
    choice = decide(rows, scores)
    assert choice["p_best"] >= 0.9 and choice["margin"]["low"] > 0
    assert choice["confidence"] == "moderate" and choice["nan_folds"] == {"a": 1}
    assert any("a (1 of 5 folds)" in note for note in choice["notes"])
    # a fold nobody scored is no evidence: 2 scored folds are too few for P(best)
    empty = {"a": [0.9, float("nan"), 0.8], "b": [0.5, float("nan"), 0.4]}
    choice = decide(rank_candidates(empty), empty)
    assert choice["p_best"] is None and choice["n_scored_folds"] == 2
    assert any("1 of 3 folds scored by no candidate" in note for note in choice["notes"])


def test_the_learning_curve_band_widens_when_the_fit_sits_at_a_bound():
    # steady log-linear growth 0.2 + 0.1 ln x over 3-24 slices: the power law's asymptote runs into its ceiling
    # (a = 1), every resample hits the same bound and agrees, and the band at 100x the data was ~0.02 wide around
    # 0.79 while the growth the points show gives 0.98 there
    rng = np.random.default_rng(0)
    truth = lambda x: 0.2 + 0.1 * np.log(x)  # noqa: E731
    folds = [[(x, float(truth(x)) + rng.normal(0, 0.01)) for x in (3, 6, 12, 24)] for _ in range(3)]
    curve = fit_curve([p[0] for f in folds for p in f], [p[1] for f in folds for p in f])
    assert curve.kind == "power" and "a" in curve.at_bound
    boot = bootstrap(folds, [24.0, 2400.0], seed=0)
    assert boot["at_bound"] == ["a"] and boot["widened"] == [False, True]
    (_, lo_in, hi_in), (_, lo_out, hi_out) = boot["forecast"]
    assert hi_in - lo_in < 0.05  # inside the measured sizes the band is the fold bootstrap's
    assert lo_out <= lo_in + 0.01 and hi_out >= float(truth(2400.0))  # no further gain .. continued growth
    # a fit off its bounds keeps its bootstrap band
    power = [[(x, 0.9 - 0.8 * x ** -0.7 + rng.normal(0, 0.01)) for x in (5, 10, 20, 40)] for _ in range(5)]
    assert not fit_curve([p[0] for f in power for p in f], [p[1] for f in power for p in f]).at_bound
    assert bootstrap(power, [400.0], seed=0)["widened"] == [False]


# --- 3. wording ------------------------------------------------------------------------------------------------

def _result(strategy: str, n_ids: int, **choice) -> dict:
    folds = [{"name": "comb-1", "train": ["a"], "test": ["a"], "n_train_slices": 6},
             {"name": "comb-2", "train": ["a"], "test": ["a"], "n_train_slices": 6}]
    return {"domain": "ge15", "ids": [f"s{i}" for i in range(n_ids)], "unit": "scan", "metric": "surface_dice_1mm",
            "seeds": [0], "folds": folds, "one_scan_folds": "interleave" if n_ids == 1 else None,
            "schedule": {"epochs": 1, "iters_per_epoch": 2, "batch_size": 4},
            "ranking": [{"rank": 1, "candidate": strategy, "mean": 0.5, "low": 0.4, "high": 0.6, "n_folds": 2,
                         "n_nan": 0, "p_best": None, "folds_won_vs_best": None}],
            "recommendation": {"strategy": strategy, "p_best": None, "confidence": "low", "runner_up": None,
                               "margin": None, "tied_with": [], "n_scored_folds": 2,
                               "notes": ["2 scored folds: too few for P(best) or high confidence (needs 3)"],
                               **choice},
            "learning_curve": None, "shift_map": None, "model": "m", "manifest": "d", "seconds": 1.0}


def test_the_report_says_dont_fine_tune_and_counts_one_scan_in_the_singular():
    from fewshot_da.recommend.report import report_markdown

    text = report_markdown(_result("none", 1))
    assert "(1 labelled scan)" in text and "1 labelled scans" not in text
    assert "**Don't fine-tune (use the source model as is)**" in text and "Fine-tune with `none`" not in text
    assert "P(best) n/a (2 folds)" in text and "too few for P(best)" in text
    assert "interleaved" in text
    several = report_markdown(_result("last", 3))
    assert "(3 labelled scans)" in several and "**Fine-tune with `last`**" in several


# --- 4. refusals: all-NaN scores, an unscored metric, empty masks, the source's own scans ----------------------

def test_all_nan_scores_are_refused_naming_the_cause():
    from fewshot_da.recommend.run import _check_scored

    with pytest.raises(InputError, match="every validation surface_dice_1mm is NaN over 2 folds"):
        _check_scored({"none": [float("nan")] * 2, "all": [float("nan")] * 2}, "surface_dice_1mm", [1, 2])
    _check_scored({"none": [float("nan"), 0.5], "all": [float("nan")] * 2}, "surface_dice_1mm", [1, 2])


SHAPE = (32, 32, 8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """ge15 phantoms with a 2-step dart20 source run trained on two of them; target manifests."""
    from fewshot_da.data.datasets import index_cc359
    from fewshot_da.data.manifest import write_manifest
    from fewshot_da.data.phantoms import write_phantom_dataset
    from fewshot_da.data.splits import write_splits
    from fewshot_da.experiments import stages

    root = tmp_path_factory.mktemp("recommend-validation")
    write_phantom_dataset(root / "data", domains=("ge15",), scans_per_domain=4, shape=SHAPE)
    records = index_cc359(root / "data")
    write_manifest(records, root / "manifest.csv")
    write_splits(records, root / "splits.json")
    stages.train(manifest=root / "manifest.csv", splits=root / "splits.json", ids=[r.id for r in records[:2]],
                 eval_ids=[], out=root / "source", progress=False,
                 overrides={"epochs": 1, "iters_per_epoch": 2, "batch_size": 2, "crop": 32, "lr_steps": {}})
    write_manifest(records[2:], root / "target.csv")
    write_manifest(records[1:3], root / "overlap.csv")
    return root, records


def _cli(cli_runner, cli_app, root, data, out, *args):
    return cli_runner.invoke(cli_app, ["recommend", "--model", str(root / "source"), "--data", str(data),
                                       "--out", str(out), "--quiet", "--strategies", "none,all", "--epochs", "1",
                                       "--iters-per-epoch", "1", "--no-shift-map", "--curve-points", "1", *args])


def test_the_source_models_own_training_scans_are_refused_by_id(tiny, tmp_path, cli_runner, cli_app):
    root, records = tiny
    result = _cli(cli_runner, cli_app, root, root / "overlap.csv", tmp_path / "out")
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "the source model was trained on labelled scan(s)" in result.output
    assert records[1].id in result.output and records[2].id not in result.output
    assert not (tmp_path / "out" / "runs").exists()


def test_a_surface_dice_metric_at_an_unscored_tolerance_is_refused(tiny, tmp_path, cli_runner, cli_app):
    root, _ = tiny
    result = _cli(cli_runner, cli_app, root, root / "target.csv", tmp_path / "out", "--metric", "surface_dice_5mm")
    assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1, result.output
    assert "--metric surface_dice_5mm: scored only at --tolerance 1 mm; add --tolerance 5" in result.output
    assert not (tmp_path / "out" / "runs").exists()


def test_empty_masks_are_refused_before_any_fine_tune(tiny, tmp_path, cli_runner, cli_app):
    import nibabel as nib

    from fewshot_da.data.manifest import Record, write_manifest

    root, records = tiny
    empty = []
    for r in records[2:]:
        mask = nib.load(r.mask)
        path = tmp_path / f"{r.id}_empty.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros(mask.shape, np.uint8), mask.affine), path)
        empty.append(Record(r.id, r.image, str(path), r.domain))
    write_manifest(empty, tmp_path / "empty.csv")
    result = _cli(cli_runner, cli_app, root, tmp_path / "empty.csv", tmp_path / "out")
    assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1, result.output
    assert "are empty on the labelled slices; nothing to score" in result.output


def test_one_scan_end_to_end_uses_interleaved_folds_and_says_so(tiny, tmp_path, cli_runner, cli_app):
    root, records = tiny
    result = _cli(cli_runner, cli_app, root, root / "target.csv", tmp_path / "out", "--ids", records[3].id,
                  "--one-scan-folds", "interleave")
    assert result.exit_code == 0, result.output
    assert "P(best) n/a (2 folds)" in result.output and "confidence high" not in result.output
    report = (tmp_path / "out" / "report.md").read_text()
    assert "(1 labelled scan)" in report and "comb-1, comb-2" in report
    assert math.isfinite(float((tmp_path / "out" / "ranking.csv").read_text().splitlines()[1].split(",")[2]))


def test_the_default_one_scan_protocol_is_the_measured_one(cli_runner, cli_app):
    # slab halves picked the phantom pairs' measured winner in 12/18 (grid schedule) and 8/12 (2 x 10 steps)
    # decisions against 7/18 and 4/12 for interleaved halves (docs/studies/recommend_one_scan.py)
    from fewshot_da.recommend.folds import ONE_SCAN_FOLDS

    assert ONE_SCAN_FOLDS[0] == "slab"
    assert [f.name for f in validation_folds(labelled_parts([12], 1))] == ["slab-1", "slab-2"]
    help_text = cli_runner.invoke(cli_app, ["recommend", "--help"]).output
    assert "--one-scan-folds [slab|interleave]" in help_text and "[default: slab]" in help_text
