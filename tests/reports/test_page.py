"""The study report a researcher reads (issue 23 §4): the baseline and the oracle beside the methods, D_R without
the pairs whose oracle-baseline gap is too small, "no winner" below the baseline, degenerate budgets, the study's
description, per-scan and example figures, unique headings, and the page in headless Chromium."""
import csv
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fewshot_da
from fewshot_da.experiments.results import write_results
from fewshot_da.reports.report import DR_AXIS, gap_figure_data, write_report
from tests.reports.test_browser import CHROMIUM, _chromium, _image_states
from tests.reports.test_collect import synthetic_rows, write_synthetic

METRIC = "surface_dice_1mm"


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _headings(html):
    return [re.sub(r"<[^>]+>", "", h) for h in re.findall(r"<h[1-6][^>]*>(.*?)</h[1-6]>", html, re.DOTALL)]


# ---- from a results table alone ------------------------------------------------------------------------------


def test_score_table_holds_the_baseline_and_the_oracle_on_the_same_scans(tmp_path):
    rows = synthetic_rows(spottune=True)
    write_results(tmp_path / "g" / "results.csv", rows)
    out = write_report([tmp_path / "g"], tmp_path / "r", examples=False)
    table = {(r["method"], r["budget"]): r for r in _read(out["score_by_budget"])}
    for budget, n_tune in (("1/4", 1), ("3", 3)):
        base, oracle = [], []
        for source, target in {(r["source"], r["target"]) for r in rows if r["strategy"] == "freeze"}:
            cases = {r["case"] for r in rows if (r["source"], r["target"], r["budget"]) == (source, target, budget)
                     and r["strategy"] == "freeze"}
            assert len(cases) == 6 - n_tune
            base.append(np.mean([r[METRIC] for r in rows if r["strategy"] == "baseline" and r["case"] in cases
                                 and (r["source"], r["target"]) == (source, target)]))
            oracle.append(np.mean([r[METRIC] for r in rows if r["strategy"] == "oracle" and r["case"] in cases]))
        assert float(table["baseline", budget]["mean"]) == pytest.approx(np.mean(base), abs=1e-9)
        assert float(table["oracle", budget]["mean"]) == pytest.approx(np.mean(oracle), abs=1e-9)
        assert int(table["baseline", budget]["n_pairs"]) == 6
    header = out["score_by_budget_md"].read_text().splitlines()[4]
    assert header.startswith("| budget (scans) | baseline | all |") and header.endswith("| oracle |")


def _with_tiny_gap(rows, source="ge15", target="philips3", gap=0.005):
    """The pair's baseline set just below the oracle on every case: D_O - D_B = `gap`."""
    oracle = {r["case"]: r[METRIC] for r in rows if r["strategy"] == "oracle"}
    for r in rows:
        if r["strategy"] == "baseline" and (r["source"], r["target"]) == (source, target):
            r[METRIC] = oracle[r["case"]] - gap
    return rows


def test_pairs_with_a_tiny_oracle_baseline_gap_are_left_out_of_dr(tmp_path, cli_runner, cli_app):
    write_results(tmp_path / "g" / "results.csv", _with_tiny_gap(synthetic_rows()))
    result = cli_runner.invoke(cli_app, ["report", str(tmp_path / "g"), "--out", str(tmp_path / "r"),
                                         "--no-examples"])
    assert result.exit_code == 0, result.output
    summary = _read(tmp_path / "r" / "gap_by_budget.csv")
    assert {int(r["n_pairs"]) for r in summary} == {5}
    assert all(-0.5 < float(r["mean"]) < 1.5 for r in summary)  # the exploded pair no longer drags the means
    flagged = _read(tmp_path / "r" / "low_gap_pairs.csv")
    assert [(r["source"], r["target"]) for r in flagged] == [("ge15", "philips3")]
    assert float(flagged[0]["gap"]) == pytest.approx(0.005, abs=1e-9) and int(flagged[0]["n_runs"]) == 18
    assert abs(float(flagged[0]["dr_min"])) > 10  # what D_R would have claimed
    decisions = _read(tmp_path / "r" / "winner_decisions.csv")
    assert ("ge15", "philips3") not in {(d["source"], d["target"]) for d in decisions} and len(decisions) == 15
    page = (tmp_path / "r" / "index.html").read_text()
    assert "Pairs left out of D_R (D_O - D_B &lt; 0.02)" in page
    assert "1 pair(s) with D_O - D_B &lt; 0.02 left out of D_R and the winners: ge15 -&gt; philips3 (0.005)" in page
    # the threshold is the user's: 0 keeps every pair
    result = cli_runner.invoke(cli_app, ["report", str(tmp_path / "g"), "--out", str(tmp_path / "r0"),
                                         "--no-examples", "--min-gap", "0"])
    assert result.exit_code == 0, result.output
    assert {int(r["n_pairs"]) for r in _read(tmp_path / "r0" / "gap_by_budget.csv")} == {6}
    assert not (tmp_path / "r0" / "low_gap_pairs.csv").exists()


def test_the_dr_figure_axis_is_clipped():
    from fewshot_da.reports.gap import PairGap

    pairs = [PairGap("dart20", "a", "b", "first", "1", gap, (gap,), {}) for gap in (0.4, -995.0, 1200.0)]
    summary = [{"arch": "dart20", "method": "first", "budget": "1", "budget_scans": 1.0, "mean": 68.5,
                "ci_low": -223.0, "ci_high": 0.9}]
    shown, points, beyond = gap_figure_data(summary, pairs)
    assert [p["gap"] for p in points] == [0.4, DR_AXIS[0], DR_AXIS[1]]
    assert (shown[0]["mean"], shown[0]["ci_low"], shown[0]["ci_high"]) == (DR_AXIS[1], DR_AXIS[0], 0.9)
    assert beyond == 4 and summary[0]["mean"] == 68.5  # the table keeps the true numbers


def test_no_winner_when_every_candidate_is_below_the_baseline(tmp_path):
    rows = synthetic_rows()
    base = {(r["source"], r["target"], r["case"]): r[METRIC] for r in rows if r["strategy"] == "baseline"}
    for r in rows:
        if r["strategy"] == "freeze" and r["budget"] == "1/4":
            r[METRIC] = base[r["source"], r["target"], r["case"]] - 0.1 - 0.01 * len(r["layers"])
    write_results(tmp_path / "g" / "results.csv", rows)
    out = write_report([tmp_path / "g"], tmp_path / "r", examples=False)
    counts = [r for r in _read(out["winners"]) if r["budget"] == "1/4"]
    assert sum(int(r["wins"]) for r in counts) == 0 and {int(r["no_winner"]) for r in counts} == {6}
    assert sum(int(r["wins"]) for r in _read(out["winners"]) if r["budget"] == "1") == 6
    decisions = [d for d in _read(out["winner_decisions"]) if d["budget"] == "1/4"]
    assert len(decisions) == 6 and {d["winner"] for d in decisions} == {"no winner"}
    assert {d["runner_up"] for d in decisions} == {"all"}  # the least bad, shown as such
    assert "| 1/4 | 0 | 0 | 0 | 6 | 6 |" in out["winners_md"].read_text()
    assert "No winner in 6 of 18 pair-budgets: every candidate there is below the baseline" in \
        out["index"].read_text()


def test_headings_are_unique(tmp_path):
    write_synthetic(tmp_path / "g", spottune=True, adabn=True)
    out = write_report([tmp_path / "g"], tmp_path / "r", examples=False)
    headings = _headings(out["index"].read_text())
    assert len(headings) > 10 and len(headings) == len(set(headings)), headings
    md = [line.lstrip("#").strip() for line in out["report_md"].read_text().splitlines() if line.startswith("#")]
    assert len(md) == len(set(md)), md


# ---- from a real (minimal) grid ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grid_report(tmp_path_factory):
    """A minimal phantoms grid (source, oracle fold 0, baseline, 'first' at 1/4 of an 8-slice scan: slices 0 and
    4, of which slice 0 is empty) with its checkpoints, and its report."""
    from fewshot_da.experiments.executors import run_experiment
    from tests.grid_plans import tiny_plan

    root = tmp_path_factory.mktemp("page")
    plan = tiny_plan(strategies=["first"], budgets=["1/4"], folds=[0], keep_checkpoints=True,
                     schedules={"source": {"epochs": 2, "iters_per_epoch": 1, "batch_size": 4, "crop": 24},
                                "finetune": {"epochs": 1, "iters_per_epoch": 1, "batch_size": 4, "crop": 24}})
    summary = run_experiment(plan, root / "grid", slots=1, log=lambda line: None)
    assert summary["failed"] == 0 and summary["total"] == 4, summary
    return root / "grid", write_report([root / "grid"], root / "report")


def test_a_degenerate_budget_is_warned_about(grid_report):
    from fewshot_da.reports.budget_check import degenerate_budgets

    grid, written = grid_report
    found = degenerate_budgets(grid)
    assert [(d["target"], d["budget"], d["n_slices"], d["n_foreground"]) for d in found] == [("ge15", "1/4", 2, 1)]
    assert degenerate_budgets(grid, min_slices=1) == []
    page = written["index"].read_text()
    assert "degenerate budget 1/4 on ge15: its fine-tune slices hold 1 slice(s) with foreground (of 2)" in page
    assert [r["n_foreground"] for r in _read(written["degenerate_budgets"])] == ["1"]
    assert "| 1/4 (degenerate: ge15) |" in written["score_by_budget_md"].read_text()


def test_a_degenerate_budget_of_a_hand_made_adapt_run(grid_report):
    from fewshot_da.reports.budget_check import degenerate_runs

    grid, _ = grid_report
    run = grid / "runs" / "adapt" / "dart20" / "siemens3-ge15" / "first" / "1_4" / "s0"
    found = degenerate_runs([run, grid / "runs" / "source" / "dart20" / "siemens3"])
    assert [(d["target"], d["budget"], d["n_slices"], d["n_foreground"]) for d in found] == [("ge15", "1/4", 2, 1)]


def test_the_page_describes_the_study(grid_report):
    _, written = grid_report
    items = {r["item"]: r["value"] for r in _read(written["study"])}
    assert items["plan"].startswith("tiny: arch dart20")
    assert "ge15 (6 scans), siemens3 (6 scans)" in items["data"]
    assert items["pairs"] == "1: siemens3 -> ge15" and items["budgets"] == "1/4" and items["strategies"] == "first"
    assert items["seeds"].startswith("adapted runs [0]")
    assert '"iters_per_epoch": 1' in items["finetune schedule"]
    assert items["runs"] == "4: 1 source, 1 oracle, 1 baseline, 1 adapt; 4 done"
    assert re.match(r"[\d.]+ (s|min) in all", items["run times"]) and "adapt" in items["run times"]
    commit = subprocess.run(["git", "-C", str(Path(fewshot_da.__file__).parent), "rev-parse", "--short", "HEAD"],
                            check=False, capture_output=True, text=True).stdout.strip()
    assert items["report made with"].startswith(f"fewshot-da {fewshot_da.__version__}, commit {commit or 'unknown'}")


def test_score_table_per_scan_view_and_example_segmentations(grid_report):
    _, written = grid_report
    assert {r["method"] for r in _read(written["score_by_budget"])} == {"baseline", "first", "oracle"}
    page = written["index"].read_text()
    for name in ("scan_scores", "examples"):
        assert f'src="{name}.png"' in page
        with Image.open(written[name]) as im:
            assert np.asarray(im.convert("L")).std() > 10, f"{name}.png is blank"
    assert "kept no model checkpoint" not in page


def test_example_panels_show_every_method(grid_report):
    from fewshot_da.experiments.results import read_results
    from fewshot_da.reports.examples import example_panels
    from fewshot_da.reports.report import _grid_specs, _run_folders

    grid, _ = grid_report
    rows = read_results(grid / "results.csv")
    (images, truths, predictions, titles), note = example_panels(rows, _run_folders(grid, [grid], (), ()),
                                                                 _grid_specs(grid), METRIC, n_cases=2)
    assert note == "" and len(images) == len(truths) == len(titles) == 2
    assert list(predictions[0]) == ["baseline", "first 1/4", "oracle"]
    assert all(t.any() for t in truths)  # the slice with the most foreground
    for image, per_method in zip(images, predictions):
        masks = [m for m in per_method.values() if m is not None]
        assert masks and all(m.shape == image.shape and set(np.unique(m)) <= {0, 1} for m in masks)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_chromium_renders_the_grid_page(tmp_path, grid_report):
    _, written = grid_report
    page = written["index"]
    states = _image_states(tmp_path, page)
    assert len(states) >= 3 and all(ok for _, ok in states), states  # transfer, per-scan, examples at least
    dom = _chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    headings = _headings(dom)
    assert "Study" in headings and "Degenerate budgets" in headings and "Example segmentations" in headings
    assert len(headings) == len(set(headings)), headings
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,3000", page.as_uri())
    with Image.open(shot) as im:
        gray = np.asarray(im.convert("L"), dtype=float)
    assert gray.std() > 20 and (gray < 200).mean() > 0.02, "the screenshot is blank"
