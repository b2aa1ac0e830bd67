"""A study plan is checked whole before anything runs (issue 22 weak 1, issue 18 §4): strategies and layer groups,
strategy options (lambda >= 0), preprocessing, schedules, tolerances, and folds / cv_folds / budgets against the
data; each refusal is one line naming the plan file and the entry. And `--dry-run` warns about a degenerate budget
(issue 23 §4): one whose allowed fine-tune slices hold fewer than 2 slices with foreground."""

import re
from pathlib import Path

import pytest
import yaml

from fewshot_da.data.manifest import Record
from fewshot_da.data.splits import make_splits
from fewshot_da.errors import InputError
from fewshot_da.experiments import grid as grid_mod
from fewshot_da.experiments.plan_checks import check_plan_data
from fewshot_da.experiments.plans import load_plan
from tests.grid_plans import tiny_plan


def _yaml(tmp_path: Path, **plan) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"base": "phantoms", **plan}))
    return path


def _refused(tmp_path: Path, pattern: str, **plan) -> str:
    path = _yaml(tmp_path, **plan)
    with pytest.raises(InputError) as caught:
        load_plan(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message  # the plan file first
    assert "\n" not in message
    assert re.search(pattern, message), message
    return message


# ---- refused when the plan is loaded ----------------------------------------------------------------------


def test_a_layer_group_typo_is_refused_at_load_naming_the_entry(tmp_path):
    message = _refused(tmp_path, r"strategies\[1\] 'frist' is neither a strategy .* nor a layer group of dart20",
                       strategies=["last", "frist"])
    assert message.endswith("did you mean 'first'?")
    _refused(tmp_path, r"strategies\[0\] 'first,frist': .*unknown group or module 'frist'",
             strategies=["first,frist"])
    _refused(tmp_path, r"strategies\[0\] 'freeze': layers 'lsat' is not a layer group of dart20.*'last'",
             strategies=[{"name": "freeze", "layers": "lsat"}])
    _refused(tmp_path, r"strategies\[0\] 'freeze': freeze needs layers", strategies=[{"name": "freeze"}])


def test_a_strategy_typo_or_an_unknown_key_is_refused_at_load(tmp_path):
    _refused(tmp_path, r"strategies\[0\]: strategy 'spotune' is not registered .*did you mean 'spottune'",
             strategies=[{"name": "spotune"}])
    _refused(tmp_path, r"strategies\[0\] 'spottune': unknown key 'option'.*did you mean 'options'",
             strategies=[{"name": "spottune", "option": {"lam": 0.01}}])
    _refused(tmp_path, r"option 'lamda' does not apply; it takes lam, temperature, unit_map",
             strategies=[{"name": "spottune", "options": {"lamda": 0.01}}])
    _refused(tmp_path, r"'gradual'.*--order 'sideways' is not valid",
             strategies=[{"name": "gradual", "options": {"order": "sideways"}}])


@pytest.mark.parametrize("entry", [
    {"name": "spottune", "options": {"lam": -0.1}},
    {"name": "spottune", "grid": {"lam": [0.0, 0.005, -0.01]}},
    {"name": "spottune", "options_by_budget": {"lam": {"1": 0.005, "1/2": -1.0}}},
])
def test_a_negative_lambda_is_refused_wherever_the_plan_gives_it(tmp_path, entry):
    _refused(tmp_path, r"strategies\[0\] 'spottune' \(budget 1(/2)?\): lam -0?\.?\d.*must be >= 0", strategies=[entry])


def test_spottune_temperature_and_non_finite_options(tmp_path):
    _refused(tmp_path, r"temperature 0 must be > 0", strategies=[{"name": "spottune", "options": {"temperature": 0}}])
    path = tmp_path / "nan.yaml"
    path.write_text("base: phantoms\nstrategies: [{name: spottune, options: {lam: .nan}}]\n")
    with pytest.raises(InputError, match=r"nan.yaml: strategies\[0\] 'spottune'.*lam = nan must be a finite"):
        load_plan(path)


def test_options_by_budget_names_plan_budgets_and_numeric_yaml_keys_apply():
    with pytest.raises(InputError, match=r"options_by_budget.lam names none of the plan's budgets \(1, 1/2, 1/4\)"):
        load_plan({"base": "phantoms", "strategies": [{"name": "spottune", "options_by_budget": {"lam": {"3": 0.1}}}]})
    # YAML reads `1: 0.02` with a numeric key; the plan's budgets are text, so the value used to be dropped
    plan = load_plan(yaml.safe_load("base: cc359-dart20\nbudgets: ['1', '1/3']\n"
                                    "strategies: [{name: spottune, options_by_budget: {lam: {1: 0.02}}}]\n"))
    specs = [s for s in grid_mod.build_specs(plan, _cc359_splits()) if s.kind == "adapt"]
    by_budget = {s.budget: s.options for s in specs if s.pair_index == 0}
    assert '"lam": 0.02' in by_budget["1"] and "lam" not in by_budget["1/3"]


def test_preprocessing_schedules_and_tolerances_are_checked_at_load(tmp_path):
    _refused(tmp_path, r"preprocess 'papr' is not a preprocessing preset \(paper, dart20-code\)", preprocess="papr")
    _refused(tmp_path, r"preprocess: unknown option 'target_spacing'; valid: .*target_spacing_mm",
             preprocess={"target_spacing": [1, 1, 1]})
    _refused(tmp_path, r"schedules: unknown stage 'fintune'; valid: source, finetune; did you mean 'finetune'",
             schedules={"fintune": {"epochs": 1}})
    _refused(tmp_path, r"schedules.finetune: unknown config key 'epoch'", schedules={"finetune": {"epoch": 1}})
    _refused(tmp_path, r"schedules.source: epochs must be >= 1, got 0", schedules={"source": {"epochs": 0}})
    _refused(tmp_path, r"schedules.finetune: epochs must be >= 1, got 0", schedules={"finetune": {"epochs": 0}})
    for bad in ([0.0], [-1.0, 1.0], [float("inf")]):
        _refused(tmp_path, r"tolerances_mm: .*must be a finite number of mm > 0", tolerances_mm=bad)
    _refused(tmp_path, r"tolerances_mm must be a list of numbers of mm", tolerances_mm=["1mm"])
    _refused(tmp_path, r"folds \[0, 0\]: oracle folds are distinct indices >= 0", folds=[0, 0])
    _refused(tmp_path, r"preset 'papr' is not a training preset", preset="papr")
    _refused(tmp_path, r"arch: unknown architecture 'dart'", arch="dart")
    _refused(tmp_path, r"augmented_baseline: --augment preset 'nope'", augmented_baseline={"preset": "nope"})
    _refused(tmp_path, r"oracles must be true or false", oracles="yes")


def test_the_presets_pass_their_own_checks():
    for name in ("cc359-dart20", "cc359-dsa", "ultrasound", "ixi-shift", "phantoms"):
        assert load_plan(name)["name"] == name


# ---- against the data -------------------------------------------------------------------------------------


def _cc359_splits():
    records, n = [], 0
    for domain in ("siemens15", "siemens3", "ge15", "ge3", "philips15", "philips3"):
        for _ in range(60):
            n += 1
            records.append(Record(f"CC{n:04d}", f"/x/{n}.nii.gz", f"/x/{n}_ss.nii.gz", domain))
    return make_splits(records)


def test_an_oracle_fold_the_data_lacks_is_refused_not_dropped():
    plan = load_plan({"base": "cc359-dart20", "folds": [0, 99]})
    specs = grid_mod.build_specs(plan, _cc359_splits())  # the old behaviour: fold 99 silently left out
    assert not any(s.run_id.endswith("/f99") for s in specs)
    with pytest.raises(InputError, match=r"^study.yaml: folds: fold 99 is not an oracle fold of siemens15 "
                                         r"\(the splits have 3: 0-2\)"):
        check_plan_data(plan, _cc359_splits(), "study.yaml")
    check_plan_data(load_plan({"base": "cc359-dart20", "folds": [0, 99], "oracles": False}), _cc359_splits(), "x")


def test_cv_folds_and_budgets_are_checked_against_the_target():
    splits = _cc359_splits()
    plan = load_plan({"base": "cc359-dart20", "targets": ["ge3"], "budgets": ["3"], "cv_folds": 61})
    with pytest.raises(InputError, match=r"^p.yaml: cv_folds 61: ge3 has only 60 scan\(s\)"):
        check_plan_data(plan, splits, "p.yaml")
    records = [Record(f"U{i}", f"/u/{i}.png", f"/u/{i}_m.png", "us") for i in range(6)]
    records += [Record(f"V{i}", f"/v/{i}.png", f"/v/{i}_m.png", "us2") for i in range(6)]
    small = make_splits(records, val_scans=1, oracle_folds=2, oracle_val_scans=1, cv_folds=3)
    plan = load_plan({"base": "ultrasound", "sources": ["us"], "targets": ["us2"], "budgets": ["5"],
                      "cv_folds": 3, "folds": [0, 1]})
    with pytest.raises(InputError, match=r"^p.yaml: budgets 5 with cv_folds 3: fold 0 of us2 has 4 fine-tune scan"):
        check_plan_data(plan, small, "p.yaml")
    plan = load_plan({"base": "ultrasound", "sources": ["us"], "targets": ["us2"], "budgets": ["1/4"],
                      "cv_folds": None, "folds": [0, 1]})
    with pytest.raises(InputError, match=r"^p.yaml: budgets 1/4 on us2: .*the target is 2D"):
        check_plan_data(plan, small, "p.yaml")


# ---- the CLI: --dry-run and a real run check the same, before anything trains -----------------------------


def _cli_plan(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_plan(**changes)))
    return path


def test_dry_run_refuses_a_typo_in_one_line_and_a_real_run_refuses_it_before_training(tmp_path, cli_runner,
                                                                                      cli_app):
    plan = _cli_plan(tmp_path, strategies=["first", "frist"])
    for extra in (["--dry-run"], []):
        out = tmp_path / f"g{len(extra)}"
        result = cli_runner.invoke(cli_app, ["experiment", "run", str(plan), "--out", str(out), "--slots", "0",
                                             *extra])
        assert result.exit_code == 1, result.output
        last = result.output.strip().splitlines()[-1]
        assert last.startswith(f"Error: {plan}: strategies[1] 'frist' is neither a strategy"), result.output
        assert not (out / "runs").exists()  # nothing trained, not even the data made


def test_dry_run_refuses_an_oracle_fold_the_data_lacks_before_any_run(tmp_path, cli_runner, cli_app):
    plan = _cli_plan(tmp_path, folds=[0, 99])
    out = tmp_path / "g"
    for extra in (["--dry-run"], []):
        result = cli_runner.invoke(cli_app, ["experiment", "run", str(plan), "--out", str(out), "--slots", "0",
                                             *extra])
        assert result.exit_code == 1, result.output
        assert result.output.strip().splitlines()[-1] == (
            f"Error: {plan}: folds: fold 99 is not an oracle fold of ge15 (the splits have 3: 0-2); "
            "drop it or set oracles: false"), result.output
        assert not (out / "runs").exists() and not (out / "grid.json").exists()


def test_dry_run_warns_about_a_degenerate_budget(tmp_path, cli_runner, cli_app):
    """The tiny phantoms are 8 slices once preprocessed: 1/4 of one scan is slices 0 and 4, and slice 0 (the
    edge of the phantom) is empty, so that budget has 1 slice with foreground; budget 1 (all 8) is fine."""
    plan = _cli_plan(tmp_path)
    result = cli_runner.invoke(cli_app, ["experiment", "run", str(plan), "--out", str(tmp_path / "g"),
                                         "--dry-run"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: budget")]
    expected = ("warning: budget 1/4 of ge15 is degenerate: its 2 fine-tune slice(s) (1 scan(s), every 4th slice) "
                "hold 1 with foreground, fewer than 2; its fine-tuned runs learn from almost no object")
    assert warnings == [expected], result.output


def test_checking_a_plan_leaves_the_global_random_state_alone():
    """The checks build a network and a SpotTUnet once; code that runs after load_plan draws the same numbers."""
    import torch

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    load_plan({"base": "phantoms", "arch": "dsa", "strategies": ["first", "spottune", "gradual"]})
    assert torch.equal(torch.rand(3), expected)
