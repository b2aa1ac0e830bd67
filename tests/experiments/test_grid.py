"""Experiment grid: plans -> run specs (CC359 enumeration), a tiny phantoms grid end to end, kill -9 + resume,
D_R and a budget's winner recomputed by hand from results.csv."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fewshot_da.data.manifest import Record
from fewshot_da.data.splits import make_splits
from fewshot_da.errors import InputError
from fewshot_da.experiments import grid as grid_mod
from fewshot_da.experiments.executors import GridProgress, chunks, run_experiment, slot_environments
from fewshot_da.experiments.plans import PRESETS, load_plan
from fewshot_da.experiments.results import read_results
from fewshot_da.reports.gap import pair_gap_closed, scan_gap_closed, sign_test
from tests.grid_plans import tiny_plan

ROOT = Path(__file__).resolve().parents[2]
CC359 = ("siemens15", "siemens3", "ge15", "ge3", "philips15", "philips3")


def _cc359_splits():
    """The reference splits of a CC359-sized id table (60 scans per domain, 59 for philips15)."""
    records, n = [], 0
    for domain in CC359:
        for _ in range(59 if domain == "philips15" else 60):
            n += 1
            records.append(Record(f"CC{n:04d}", f"/x/{n}.nii.gz", f"/x/{n}_ss.nii.gz", domain))
    return make_splits(records)


# ---- plans and specs --------------------------------------------------------------------------------------


def test_cc359_dart20_enumeration_matches_reference():
    """REFERENCE §10 item 11: 6 baselines (here 30 pair-level baseline scorings of the 6 source models),
    18 oracle runs (3 folds x 6 domains), 30 pairs x {first, last, all} x 8 budgets (§3, DART20)."""
    specs = grid_mod.build_specs(load_plan("cc359-dart20"), _cc359_splits())
    kinds = {k: [s for s in specs if s.kind == k] for k in grid_mod.KINDS}
    # + the source + intensity augmentation baseline (issue 10): 6 augmented sources scored on the 30 pairs
    assert {k: len(v) for k, v in kinds.items()} == {"source": 12, "oracle": 18, "baseline": 60, "adapt": 720}
    augmented = [s for s in kinds["baseline"] if s.strategy == "baseline-aug"]
    assert len(augmented) == 30 and all(s.parent.startswith("source-aug/dart20/") for s in augmented)
    aug_sources = [s for s in kinds["source"] if s.run_id.startswith("source-aug/")]
    assert all(json.loads(s.overrides)["augment"] == {"preset": "intensity", "mode": "intensity"}
               for s in aug_sources) and len(aug_sources) == 6
    plain = grid_mod.build_specs(load_plan({"base": "cc359-dart20", "augmented_baseline": None}), _cc359_splits())
    assert {k: sum(s.kind == k for s in plain) for k in grid_mod.KINDS} == {"source": 6, "oracle": 18,
                                                                            "baseline": 30, "adapt": 720}
    assert {s.budget for s in kinds["adapt"]} == {"3", "1", "1/3", "1/6", "1/12", "1/24", "1/36", "1/48"}
    # pair index = 5 * source + rank of the target among the other domains
    index = {(s.source, s.target): s.pair_index for s in kinds["baseline"]}
    assert index[("siemens15", "siemens3")] == 0 and index[("siemens15", "philips3")] == 4
    assert index[("ge15", "siemens15")] == 10 and index[("ge15", "ge3")] == 12
    assert index[("philips3", "philips15")] == 29
    assert sorted(index.values()) == list(range(30))
    # sources and oracles come before every run that needs them; ids are unique and readable
    position = {s.run_id: i for i, s in enumerate(specs)}
    assert all(position[s.parent] < position[s.run_id] for s in specs if s.parent)
    assert "adapt/dart20/siemens3-ge15/first/1_8/s0" not in position
    assert "adapt/dart20/siemens3-ge15/first/1_48/s0" in position


def test_cc359_dsa_enumeration_with_spottune():
    """§10 item 11: 30 pairs x {all, first, last} x 9 settings; SpotTUnet on pairs 5-29 with the paper's
    lambda per budget; the lambda search (9 values) on pairs 0-4 (source siemens15)."""
    specs = grid_mod.build_specs(load_plan("cc359-dsa"), _cc359_splits())
    adapt = [s for s in specs if s.kind == "adapt"]
    final = [s for s in adapt if s.strategy == "spottune" and not s.layers]
    search = [s for s in adapt if s.strategy == "spottune" and s.layers]
    assert len([s for s in adapt if s.strategy == "freeze"]) == 30 * 3 * 9
    assert len(final) == 25 * 9 and {s.pair_index for s in final} == set(range(5, 30))
    assert len(search) == 9 * 5 * 9 and {s.source for s in search} == {"siemens15"}
    lam = {s.budget: json.loads(s.options)["lam"] for s in final}
    assert lam == {"3": 0.0, "2": 0.005, "1": 0.005, "1/3": 0.007, "1/6": 0.005, "1/12": 0.005, "1/24": 0.012,
                   "1/36": 0.007, "1/48": 0.010}
    assert all(json.loads(s.options)["temperature"] == 0.1 for s in final + search)


def test_unregistered_strategy_is_refused():
    with pytest.raises(InputError, match="strategy 'magic' is not registered"):  # when the plan is loaded
        load_plan({"base": "cc359-dart20", "strategies": ["first", {"name": "magic"}]})


def test_dsa_plan_without_spottune_has_nine_budgets():
    plan = load_plan({"base": "cc359-dsa", "strategies": ["first", "last", "all"]})
    specs = grid_mod.build_specs(plan, _cc359_splits())
    assert sum(s.kind == "adapt" for s in specs) == 30 * 3 * 9
    assert {s.arch for s in specs} == {"dsa"}


def test_plan_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: phantoms\nbudgetz: [1]\n")
    with pytest.raises(InputError, match=r"bad.yaml: unknown key 'budgetz'"):
        load_plan(bad)
    with pytest.raises(InputError, match="neither a preset"):
        load_plan(str(tmp_path / "missing.yaml"))
    with pytest.raises(InputError, match="budget '1/x'"):
        grid_mod.parse_budget("1/x")
    with pytest.raises(InputError, match="needs 3 fine-tune scan"):
        grid_mod.build_specs(
            load_plan({"base": "cc359-dart20", "budgets": ["3"]}),
            {**_cc359_splits(), "one2one": {d: {"finetune": {"1": ["a"]}} for d in CC359}},
        )


def test_yaml_plan_paths_are_relative_to_the_file(tmp_path):
    (tmp_path / "m.csv").write_text("id\n")
    path = tmp_path / "plan.yaml"
    path.write_text(
        yaml.safe_dump(
            {"base": "cc359-dart20", "data": {"manifest": "m.csv", "splits": "s.json"}, "seeds": [0, 1]}
        )
    )
    plan = load_plan(path)
    assert plan["data"]["manifest"] == str(tmp_path / "m.csv") and plan["seeds"] == [0, 1]
    assert plan["strategies"] == PRESETS["cc359-dart20"]["strategies"]


def test_slots_split_cpu_threads_or_gpus():
    cpu = slot_environments(2, [], 16)
    assert [t for _, t in cpu] == [8, 8] and cpu[0][0]["CUDA_VISIBLE_DEVICES"] == ""
    gpu = slot_environments(3, ["0", "1"], 12)
    assert [e["CUDA_VISIBLE_DEVICES"] for e, _ in gpu] == ["0", "1", "0"] and gpu[0][1] == 4
    assert [len(c) for c in chunks(list(range(10)), 4)] == [4, 4, 2]


def test_progress_eta_and_log_lines():
    lines = []
    bar = GridProgress(4, 1, log=lines.append)
    bar.update({"run": "a", "status": "done", "seconds": 1.0})
    bar.update({"run": "b", "status": "failed", "seconds": 0.0, "error": "boom"})
    assert lines[0].startswith("[2/4] done a") and "ETA" in lines[0]
    assert lines[1].startswith("[3/4] failed b") and lines[1].endswith("boom")


# ---- a tiny grid, end to end ------------------------------------------------------------------------------


def _summaries(out: Path) -> dict:
    return {
        str(p.parent.relative_to(out / "runs")): p.stat().st_mtime_ns
        for p in (out / "runs").rglob("summary.json")
    }


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory):
    """The tiny plan run uninterrupted with 2 local slots (1 CPU thread each)."""
    out = tmp_path_factory.mktemp("grid") / "tiny"
    lines = []
    summary = run_experiment(tiny_plan(), out, slots=2, log=lines.append)
    return out, summary, lines


def test_augmented_source_baseline_is_scored_unadapted_and_reported(tmp_path):
    """Issue 10: the source trained with intensity augmentation, scored on the pair's test scans with no
    adaptation, appears in results.csv as `baseline-aug` and in the D_R table as a no-label row."""
    from fewshot_da.reports.report import write_report

    out = tmp_path / "aug"
    summary = run_experiment(tiny_plan(augmented_baseline={"preset": "intensity", "mode": "intensity"},
                                       strategies=["all"], budgets=["1"], oracles=True, folds=[0]), out,
                             log=lambda line: None)
    assert summary["failed"] == 0 and summary["total"] == 2 + 1 + 2 + 1
    aug_run = json.loads((out / "runs/source-aug/dart20/siemens3/spec.json").read_text())
    assert json.loads(aug_run["overrides"])["augment"] == {"preset": "intensity", "mode": "intensity"}
    rows = read_results(out / "results.csv")
    plain = {r["case"]: r for r in rows if r["strategy"] == "baseline"}
    augmented = {r["case"]: r for r in rows if r["strategy"] == "baseline-aug"}
    assert set(plain) == set(augmented) and len(plain) == 5
    assert any(plain[c]["dice"] != augmented[c]["dice"] for c in plain)  # a different source model
    write_report([out], out / "report")
    table = (out / "report" / "gap_by_budget.md").read_text()
    assert "baseline-aug" in table and "0 (no labels)" in table


def test_a_failing_run_keeps_its_error_and_traceback_and_the_grid_goes_on(tmp_path, monkeypatch):
    from fewshot_da.experiments import stages

    real = stages.adapt

    def flaky(**kwargs):
        if "/first/" in str(kwargs["out"]):
            raise RuntimeError("boom\nsecond line")
        return real(**kwargs)

    plan = tiny_plan(strategies=["first", "all"], budgets=["1"], folds=[0])
    out = tmp_path / "g"
    monkeypatch.setattr(stages, "adapt", flaky)
    summary = run_experiment(plan, out, slots=0, log=lambda line: None)
    folder = out / "runs/adapt/dart20/siemens3-ge15/first/1/s0"
    assert summary["failed"] == 1 and summary["done"] == summary["total"] - 1
    assert (folder / "error.txt").read_text() == "RuntimeError: boom\n"  # one line for status and logs
    trace = (folder / "error_traceback.txt").read_text()
    assert trace.startswith("Traceback") and "in flaky" in trace and "second line" in trace
    monkeypatch.setattr(stages, "adapt", real)
    again = run_experiment(plan, out, slots=0, log=lambda line: None)
    assert again["failed"] == 0 and (folder / "summary.json").is_file()
    assert not (folder / "error.txt").exists() and not (folder / "error_traceback.txt").exists()


def test_tiny_grid_end_to_end(tiny_grid, cli_runner, cli_app):
    out, summary, lines = tiny_grid
    assert summary["failed"] == 0 and summary["done"] == summary["total"] == 1 + 3 + 1 + 4
    rows = read_results(out / "results.csv")
    by_strategy = {}
    for row in rows:
        by_strategy.setdefault(row["strategy"], []).append(row)
    assert set(by_strategy) == {"baseline", "oracle", "freeze"}
    assert len(by_strategy["baseline"]) == 5  # the pair's test scans: 6 ge15 scans minus the fine-tune scan
    assert len(by_strategy["oracle"]) == 6  # every ge15 scan is in exactly one oracle test fold
    assert len({r["case"] for r in by_strategy["oracle"]}) == 6
    assert len(by_strategy["freeze"]) == 4 * 5
    assert all(r["source"] == r["target"] == "ge15" and r["budget"] == "" for r in by_strategy["oracle"])
    assert {(r["layers"], r["budget"]) for r in by_strategy["freeze"]} == {
        ("first", "1"),
        ("first", "1/4"),
        ("all", "1"),
        ("all", "1/4"),
    }
    assert all(0.0 <= r["surface_dice_1mm"] <= 1.0 for r in rows)
    # adapted runs drop their checkpoint once finished; the source model keeps its own
    assert not list((out / "runs" / "adapt").rglob("checkpoint.pt"))
    assert (out / "runs" / "source" / "dart20" / "siemens3" / "checkpoint.pt").is_file()
    assert any(line.startswith("[9/9] done") for line in lines)
    result = cli_runner.invoke(cli_app, ["experiment", "status", str(out)])
    assert result.exit_code == 0, result.output
    assert "adapt" in result.output and "results.csv: 31 rows" in result.output
    all_line = next(line for line in result.output.splitlines() if line.startswith("all"))
    assert all_line.split()[1:] == ["9", "0", "0", "0", "0", "9"]


def test_rerun_skips_finished_runs(tiny_grid):
    out, _, _ = tiny_grid
    before, text = _summaries(out), (out / "results.csv").read_bytes()
    lines = []
    again = run_experiment(tiny_plan(), out, slots=0, log=lines.append)
    assert again["done"] == 9 and "9 already finished" in lines[0]
    assert _summaries(out) == before and (out / "results.csv").read_bytes() == text


def test_changed_plan_in_same_folder_is_refused(tiny_grid):
    out, _, _ = tiny_grid
    changed = tiny_plan(schedules={"source": {"epochs": 3}})
    with pytest.raises(InputError, match="made by a different plan"):
        run_experiment(changed, out, slots=0, dry_run=True, log=lambda _: None)


def test_kill9_mid_grid_then_rerun_matches_uninterrupted(tiny_grid, tmp_path):
    """kill -9 of the whole grid (controller and workers) while a run is between checkpoints; the re-run
    recomputes no finished run, resumes the interrupted one and writes a byte-identical results.csv."""
    reference, _, _ = tiny_grid
    out = tmp_path / "killed"
    plan_file = tmp_path / "tiny.yaml"
    plan_file.write_text(yaml.safe_dump(tiny_plan()))
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from fewshot_da.experiments.executors import "
        "run_experiment; run_experiment(sys.argv[2], sys.argv[3], slots=2, log=lambda _: None)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(ROOT), str(plan_file), str(out)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    interrupted = None
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            runs = out / "runs"
            partial = (
                [p.parent for p in runs.rglob("checkpoint.pt") if not (p.parent / "summary.json").exists()]
                if runs.is_dir()
                else []
            )
            if partial and any(runs.rglob("summary.json")):
                os.killpg(proc.pid, signal.SIGKILL)
                interrupted = partial
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and interrupted is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert interrupted, (
        f"the grid ended before a run was caught mid-way: {proc.stderr.read().decode()[-500:]}"
    )
    finished_before = _summaries(out)
    assert 0 < len(finished_before) < 9
    lines = []
    resumed = run_experiment(str(plan_file), out, slots=2, log=lines.append)
    assert resumed["failed"] == 0 and resumed["done"] == 9
    after = _summaries(out)
    assert {k: after[k] for k in finished_before} == finished_before  # nothing finished was recomputed
    assert any(
        "resumed after epoch" in (p / "log.txt").read_text() for p in interrupted if (p / "log.txt").exists()
    )
    assert not any(f"done {run_id} " in line for line in lines for run_id in finished_before)
    assert (out / "results.csv").read_bytes() == (reference / "results.csv").read_bytes()


def test_pair_gap_and_winner_by_hand(tiny_grid):
    """D_R of siemens3 -> ge15 at budget 1 and the budget's winner (first vs all), by hand from results.csv:
    D_R = (mean D - mean D_B) / (mean D_O - mean D_B) over the same scans; winner = the larger pair-level D_R;
    significance = the sign test of the scan-level D_R differences (two-sided binomial, zeros dropped)."""
    out, _, _ = tiny_grid
    rows = read_results(out / "results.csv")
    metric = "surface_dice_1mm"
    base = {r["case"]: r[metric] for r in rows if r["strategy"] == "baseline"}
    oracle = {r["case"]: r[metric] for r in rows if r["strategy"] == "oracle"}
    method = {
        layers: {
            r["case"]: r[metric]
            for r in rows
            if r["strategy"] == "freeze" and r["layers"] == layers and r["budget"] == "1"
        }
        for layers in ("first", "all")
    }
    cases = sorted(method["first"])
    assert cases == sorted(method["all"]) == sorted(base) and set(cases) <= set(oracle)
    gaps, scans = {}, {}
    for layers, scores in method.items():
        d, db, do = (sum(x[c] for c in cases) / len(cases) for x in (scores, base, oracle))
        by_hand = (d - db) / (do - db)
        gaps[layers] = pair_gap_closed(
            [scores[c] for c in cases], [base[c] for c in cases], [oracle[c] for c in cases]
        )
        assert gaps[layers] == pytest.approx(by_hand, rel=1e-12)
        scans[layers] = scan_gap_closed(
            [scores[c] for c in cases], [base[c] for c in cases], [oracle[c] for c in cases]
        )
        for c, value in zip(cases, scans[layers]):
            if oracle[c] != base[c]:
                assert value == pytest.approx((scores[c] - base[c]) / (oracle[c] - base[c]))
    winner = max(gaps, key=gaps.get)
    loser = "all" if winner == "first" else "first"
    diffs = [a - b for a, b in zip(scans[winner], scans[loser]) if math.isfinite(a - b) and a != b]
    wins, n = sum(d > 0 for d in diffs), len(diffs)
    tail = sum(math.comb(n, k) for k in range(n + 1) if math.comb(n, k) <= math.comb(n, wins)) / 2**n
    assert sign_test(scans[winner], scans[loser]) == pytest.approx(min(1.0, tail))
    assert gaps[winner] >= gaps[loser]


def test_presets_point_at_the_shared_data_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("FEWSHOT_DA_SHARED_DATA", str(tmp_path))
    roots = [e["root"] for e in load_plan("ultrasound")["data"]["index"]]
    assert roots == [str(tmp_path / "busi"), str(tmp_path / "bus-bra-mini")]
    assert load_plan("ixi-shift")["data"]["root"] == str(tmp_path / "ixi-hh")
    for name in PRESETS:
        assert load_plan(name)["name"] == name


def test_cli_refuses_a_plan_whose_strategy_is_not_registered(tiny_grid, cli_runner, cli_app, tmp_path):
    manifest = tiny_grid[0] / "data" / "manifest.csv"
    plan = tmp_path / "magic.yaml"
    plan.write_text(yaml.safe_dump({"base": "phantoms", "strategies": [{"name": "magic"}]}))
    result = cli_runner.invoke(cli_app, ["experiment", str(plan), "--out", str(tmp_path / "g"),
                                         "--data", str(manifest)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith(
        f"Error: {plan}: strategies[0]: strategy 'magic' is not registered")
    result = cli_runner.invoke(cli_app, ["experiment", "status", str(tmp_path)])
    assert result.exit_code == 1 and "not an experiment grid folder" in result.output


def test_a_bare_strategy_name_is_that_strategy_and_a_group_name_is_freeze():
    plan = load_plan({"base": "phantoms", "strategies": ["first", "spottune", "adabn"], "budgets": ["1"]})
    specs = [s for s in grid_mod.build_specs(plan, _cc359_splits()) if s.kind == "adapt"]
    kinds = {(s.strategy, s.layers) for s in specs}
    assert kinds == {("freeze", "first"), ("spottune", ""), ("adabn", "")}
    assert any(s.run_id.endswith("/spottune/1/s0") for s in specs)


def test_cv_folds_give_one_adapted_run_and_baseline_per_fold():
    """The ultrasound protocol (Amiri et al.): k-fold CV over the target; budgets are images of each fold's
    training part; every fold's test part is scored by its own baseline."""
    plan = load_plan({"base": "cc359-dart20", "sources": ["ge15"], "targets": ["ge3"], "budgets": ["5"],
                      "strategies": ["first"], "cv_folds": 5})
    specs = grid_mod.build_specs(plan, _cc359_splits())
    adapt = [s for s in specs if s.kind == "adapt"]
    base = [s for s in specs if s.kind == "baseline"]
    assert [s.fold for s in adapt] == [0, 1, 2, 3, 4] and {s.folds for s in adapt} == {5}
    assert adapt[2].run_id == "adapt/dart20/ge15-ge3/first/5/s0/f2"
    assert [s.run_id for s in base if s.strategy == "baseline"][:2] == ["baseline/dart20/ge15-ge3/f0",
                                                                         "baseline/dart20/ge15-ge3/f1"]
    assert [s.run_id for s in base][1] == "baseline-aug/dart20/ge15-ge3/f0"  # each fold: plain, then augmented
    with pytest.raises(InputError, match="cv_folds must be"):
        load_plan({"base": "phantoms", "cv_folds": 1})


def test_yaml_overrides_replace_schedule_values_whole():
    plan = load_plan({"base": "ixi-shift", "schedules": {"source": {"epochs": 2, "lr_steps": {}}}})
    assert plan["schedules"]["source"]["lr_steps"] == {} and plan["schedules"]["source"]["crop"] == 128
    assert plan["schedules"]["finetune"]["lr_steps"] == {2: 0.1}
    plan = load_plan({"base": "ixi-shift", "data": {"n": 4}})
    assert plan["data"]["n"] == 4
    assert set(plan["data"]["shifts"]) == {"shift-gamma", "shift-bright", "shift-noisy"}
