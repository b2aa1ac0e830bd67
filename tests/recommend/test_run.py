"""recommend: validation folds, the learning-curve fit and its inverse, the ranking and its confidence, and end
to end on phantoms (adapting beats not adapting; a re-run recomputes nothing; bad input stops in one line)."""
import json
import math

import numpy as np
import pytest

from fewshot_da.errors import InputError
from fewshot_da.recommend.candidates import CANDIDATES, parse_candidates, uses_labels
from fewshot_da.recommend.folds import curve_folds, labelled_parts, sub_volume, validation_folds
from fewshot_da.recommend.learning_curve import Curve, bootstrap, fit_curve
from fewshot_da.recommend.ranking import decide, probability_best, rank_candidates


def _slices(parts):
    return sorted((p.scan, s) for p in parts for s in p.slices)


def test_folds_hold_out_every_scan_once_and_never_train_on_it():
    parts = labelled_parts([10, 12, 9], 1)
    folds = validation_folds(parts, max_folds=5)
    assert len(folds) == 3  # leave-one-scan-out
    held = [p.scan for f in folds for p in f.test]
    assert sorted(held) == [0, 1, 2]
    for f in folds:
        assert not {p.scan for p in f.train} & {p.scan for p in f.test}
        assert sorted(_slices(f.train) + _slices(f.test)) == _slices(parts)
    seven = validation_folds(labelled_parts([4] * 7, 1), max_folds=5, seed=3)
    assert len(seven) == 5 and sorted(p.scan for f in seven for p in f.test) == list(range(7))
    assert [f.test for f in seven] == [f.test for f in validation_folds(labelled_parts([4] * 7, 1), max_folds=5,
                                                                         seed=3)]


def test_one_scan_is_split_into_two_slabs_of_its_labelled_comb():
    parts = labelled_parts([40], 4)
    assert parts[0].slices == tuple(range(0, 40, 4))
    a, b = validation_folds(parts, one_scan="slab")
    assert a.train == b.test and a.test == b.train
    assert a.train[0].slices == (0, 4, 8, 12, 16) and a.test[0].slices == (20, 24, 28, 32, 36)
    with pytest.raises(InputError, match="single labelled slice"):
        validation_folds(labelled_parts([5], 4))
    with pytest.raises(InputError, match="only 3 slices"):
        labelled_parts([10, 3], 4)


def test_curve_folds_shrink_the_training_set_only():
    fold = validation_folds(labelled_parts([16] * 5, 1), max_folds=5)[0]
    sizes = curve_folds(fold, points=5)
    counts = [f.n_train_slices for f in sizes]
    assert counts[0] == 64 and counts == sorted(counts, reverse=True) and len(set(counts)) == len(counts)
    assert counts == [64, 32, 16, 8, 4]
    assert all(f.test == fold.test for f in sizes)
    assert all(set(_slices(f.train)) <= set(_slices(fold.train)) for f in sizes)
    slab = validation_folds(labelled_parts([12], 1), one_scan="slab")[0]
    assert [f.n_train_slices for f in curve_folds(slab, points=4)] == [6, 3, 2]  # down to 2 slices


def test_sub_volume_keeps_mm_geometry():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Vol:
        id: str
        image: np.ndarray
        mask: np.ndarray
        spacing_mm: tuple

        @property
        def n_slices(self):
            return self.image.shape[0]

    vol = Vol("a", np.arange(20 * 4).reshape(20, 2, 2).astype(np.float32), np.ones((20, 2, 2), np.uint8),
              (1.5, 1.0, 0.5))
    sub = sub_volume(vol, (2, 6, 10))
    assert sub.spacing_mm == (6.0, 1.0, 0.5) and sub.image.shape == (3, 2, 2) and sub.id == "a[2:11:4]"
    np.testing.assert_array_equal(sub.image, vol.image[[2, 6, 10]])
    with pytest.raises(ValueError):
        sub_volume(vol, (1, 2, 5))


def test_power_law_fit_recovers_its_curve_and_inverts():
    x = np.repeat([5.0, 10, 20, 40, 80], 3)
    truth = Curve("power", 0.9, 0.8, 0.7)
    y = truth(x) + np.random.default_rng(0).normal(0, 0.002, x.size)
    curve = fit_curve(x, y)
    assert curve.kind == "power"
    assert curve.a == pytest.approx(0.9, abs=0.01) and curve.c == pytest.approx(0.7, abs=0.1)
    assert float(curve(1000)) == pytest.approx(float(truth(1000)), abs=0.01)
    size = curve.size_for(0.85)
    assert float(curve(size)) == pytest.approx(0.85, abs=1e-6)
    assert curve.size_for(0.95) == math.inf  # above the asymptote
    assert fit_curve([10, 10], [0.5, 0.7]) == Curve("flat", pytest.approx(0.6), 0.0, 0.0)
    two = fit_curve([10, 20, 10, 20], [0.5, 0.6, 0.5, 0.6])
    assert two.kind == "log" and float(two(20)) == pytest.approx(0.6)


def test_bootstrap_band_covers_the_truth():
    truth = Curve("power", 0.9, 0.8, 0.7)
    rng = np.random.default_rng(1)
    folds = [[(x, float(truth(x)) + rng.normal(0, 0.01)) for x in (5, 10, 20, 40)] for _ in range(5)]
    boot = bootstrap(folds, [40.0, 200.0], target=0.8, seed=0)
    (x1, lo1, hi1), (x2, lo2, hi2) = boot["forecast"]
    assert lo1 <= truth(40.0) <= hi1 and lo2 <= truth(200.0) <= hi2 and hi2 - lo2 < 0.2
    low, high = boot["size_for"]
    assert low <= truth.size_for(0.8) <= high


def test_ranking_puts_a_dominant_candidate_first_with_high_confidence():
    scores = {"a": [0.6, 0.62, 0.61, 0.63, 0.6], "b": [0.8, 0.83, 0.81, 0.84, 0.82], "c": [0.5, 0.7, 0.4, 0.6, 0.5]}
    p = probability_best(scores)
    assert sum(p.values()) == pytest.approx(1.0) and p["b"] == pytest.approx(1.0)
    rows = rank_candidates(scores)
    assert [r["candidate"] for r in rows] == ["b", "a", "c"]
    assert rows[0]["low"] < rows[0]["mean"] < rows[0]["high"] and rows[1]["folds_won_vs_best"] == 0
    choice = decide(rows, scores)
    assert choice["strategy"] == "b" and choice["confidence"] == "high" and choice["tied_with"] == []
    assert choice["margin"]["low"] > 0


def test_ranking_of_near_ties_is_not_confident():
    scores = {"a": [0.70, 0.80, 0.75, 0.72], "b": [0.71, 0.78, 0.76, 0.71]}
    choice = decide(rank_candidates(scores), scores)
    assert choice["confidence"] in ("low", "moderate") and choice["tied_with"] == ["b"]
    assert choice["margin"]["low"] < 0 < choice["margin"]["high"]


def test_candidates_cover_the_issue_list_and_refuse_unknown_names():
    assert set(CANDIDATES) == {"first", "last", "all", "contracting", "expanding", "gradual", "spottune", "adabn",
                               "histogram", "none"}
    assert parse_candidates("last, first,last") == ["last", "first"]
    assert not uses_labels("adabn") and uses_labels("gradual")
    with pytest.raises(InputError, match="'middle' is not a candidate"):
        parse_candidates("first,middle")


SHAPE = (32, 32, 12)
QUICK = {"epochs": 2, "iters_per_epoch": 10, "batch_size": 4, "crop": 32, "lr": 1e-2}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """siemens15 phantoms with a dart20 source run; a manifest of 3 labelled ge15 target scans."""
    from fewshot_da.data.datasets import index_cc359
    from fewshot_da.data.manifest import write_manifest
    from fewshot_da.data.phantoms import write_phantom_dataset
    from fewshot_da.data.splits import write_splits
    from fewshot_da.experiments import stages

    root = tmp_path_factory.mktemp("recommend")
    write_phantom_dataset(root / "data", domains=("siemens15", "ge15"), scans_per_domain=5, shape=SHAPE)
    records = index_cc359(root / "data")
    write_manifest(records, root / "manifest.csv")
    write_splits(records, root / "splits.json")
    source = [r.id for r in records if r.domain == "siemens15"]
    stages.train(manifest=root / "manifest.csv", splits=root / "splits.json", ids=source, eval_ids=[],
                 out=root / "source", progress=False,
                 overrides={"epochs": 2, "iters_per_epoch": 40, "batch_size": 4, "crop": 32, "lr": 1e-2,
                            "lr_steps": {0: 0.1}})
    write_manifest([r for r in records if r.domain == "ge15"][:3], root / "target.csv")
    return root


def _recommend(project, out, **kwargs):
    from fewshot_da.recommend.run import recommend

    options = dict(model=project / "source", manifest=project / "target.csv", out=out, overrides=dict(QUICK),
                   strategies="none,last,all", progress=False, log=lambda line: None)
    options.update(kwargs)
    return recommend(**options)


def test_recommend_ranks_adapting_above_not_adapting_and_writes_its_outputs(project):
    out = project / "rec"
    result = _recommend(project, out, target_score=0.99)
    ranking = {r["candidate"]: r for r in result["ranking"]}
    assert len(ranking) == 3 and len(result["folds"]) == 3
    # learning signal: fine-tuning on the target's labelled slices beats the unadapted source model
    assert max(ranking["last"]["mean"], ranking["all"]["mean"]) > ranking["none"]["mean"] + 0.05
    assert result["recommendation"]["strategy"] != "none"
    lc = result["learning_curve"]
    assert lc["strategy"] == result["recommendation"]["strategy"]
    assert len(lc["points"]) > len(result["folds"])  # smaller training sets were measured too
    assert lc["target"]["score"] == 0.99 and lc["total_labelled_slices"] == 3 * SHAPE[2]
    for name in ("report.md", "ranking.csv", "validation.csv", "learning_curve.csv", "learning_curve.png",
                 "shift_map/shift_map.csv", "shift_map/shift_map.png"):
        assert (out / name).is_file(), name
    assert not (out / "shift_map" / "cache").exists()  # the shift map reads the labelled scans' own cache
    saved = json.loads((out / "recommendation.json").read_text())
    assert saved["recommendation"] == json.loads(json.dumps(result["recommendation"]))
    report = (out / "report.md").read_text()
    assert f"Fine-tune with `{result['recommendation']['strategy']}`" in report and "Learning curve" in report
    assert not list(out.glob("runs/*/*/checkpoint.pt"))  # scored runs keep no weights


def test_a_rerun_recomputes_nothing_and_an_interrupted_run_redoes_only_itself(project):
    out = project / "rec-resume"
    lines = []
    first = _recommend(project, out, strategies="none,last", shift=False, curve=False, log=lines.append)
    summaries = sorted(out.glob("runs/*/*/summary.json"))
    assert len(summaries) == 6
    assert [line.split("]")[0].strip() for line in lines if line.strip().startswith("[")] == [
        f"[{i}/6" for i in range(1, 7)]  # one progress line per validation run without a terminal
    stamps = {p: p.stat().st_mtime_ns for p in summaries}
    lost = summaries[3]
    lost.unlink()  # as if killed before this run wrote its summary
    resumed = []
    again = _recommend(project, out, strategies="none,last", shift=False, curve=False, progress=True,
                       log=resumed.append)
    assert again["ranking"] == first["ranking"]
    changed = [p for p in summaries if p.stat().st_mtime_ns != stamps.get(p)]
    assert changed == [lost]
    # with a progress bar too, every reused run says so in one line; the re-run one has no such note
    reused = [line for line in resumed if line.strip().startswith("[") and "finished before, reused" in line]
    assert len(reused) == 5


def test_one_scan_validates_on_two_slabs_and_2d_needs_two_images(project):
    from fewshot_da.data.manifest import read_manifest

    one = read_manifest(project / "target.csv")[0].id
    result = _recommend(project, project / "rec-one", ids=[one], slices="1/2", strategies="none,all", shift=False,
                        curve=False, one_scan_folds="slab")
    assert [f["name"] for f in result["folds"]] == ["slab-1", "slab-2"]
    assert [f["n_train_slices"] for f in result["folds"]] == [3, 3]


@pytest.mark.parametrize("case,message", [
    ("unlabelled", "has no mask"),
    ("domain", "no scan of domain 'philips3'"),
    ("strategy", "'middle' is not a candidate"),
    ("metric", "--metric 'hd95_mm'"),
    ("target", "--target-score 1.5"),
])
def test_bad_inputs_stop_with_one_line(project, tmp_path, cli_runner, cli_app, case, message):
    from fewshot_da.data.manifest import Record, read_manifest, write_manifest

    data = project / "target.csv"
    args = []
    if case == "unlabelled":
        records = read_manifest(data)
        data = tmp_path / "unlabelled.csv"
        write_manifest([Record(r.id, r.image, "" if n == 1 else r.mask, r.domain) for n, r in enumerate(records)],
                       data)
    args = {"domain": ["--domain", "philips3"], "strategy": ["--strategies", "first,middle"],
            "metric": ["--metric", "hd95_mm"], "target": ["--target-score", "1.5"]}.get(case, [])
    result = cli_runner.invoke(cli_app, ["recommend", "--model", str(project / "source"), "--data", str(data),
                                         "--out", str(tmp_path / "out"), "--quiet", *args])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_cli_prints_the_ranking_and_the_forecast(project, cli_runner, cli_app):
    result = cli_runner.invoke(cli_app, [
        "recommend", "--model", str(project / "source"), "--data", str(project / "target.csv"),
        "--out", str(project / "rec"), "--strategies", "none,last,all", "--target-score", "0.99", "--quiet",
        *[f"--{k.replace('_', '-')}={v}" for k, v in QUICK.items()]])
    assert result.exit_code == 0, result.output
    assert "recommended:" in result.output and "to reach 0.99" in result.output
    assert " 1. " in result.output and "P(best)" in result.output


def test_folds_without_a_score_are_left_out_not_propagated():
    scores = {"a": [float("nan"), 0.5, 0.6], "b": [float("nan"), 0.4, 0.5], "c": [float("nan")] * 3}
    rows = rank_candidates(scores)
    assert [r["candidate"] for r in rows] == ["a", "b", "c"] and rows[0]["n_folds"] == 2
    # 2 scored folds: too few for a fold bootstrap's P(best) (issue 21 §0), so none is given
    assert rows[0]["p_best"] is None and rows[2]["p_best"] is None
