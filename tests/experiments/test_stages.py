"""End-to-end runs on tiny phantoms: train -> adapt -> predict through the CLI, the demo, run folders, errors."""
import json

import numpy as np
import pytest
import torch
import yaml

from fewshot_da.data.datasets import index_cc359
from fewshot_da.data.manifest import write_manifest
from fewshot_da.data.phantoms import write_phantom_dataset
from fewshot_da.data.splits import write_splits

TINY = ["--epochs", "1", "--lr-steps", "", "--iters-per-epoch", "2", "--batch-size", "2", "--crop", "32", "--quiet"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Two phantom domains of 6 scans (32x32x12), a manifest, splits and a trained tiny source run."""
    from click.testing import CliRunner
    from fewshot_da_cli.main import cli

    root = tmp_path_factory.mktemp("project")
    write_phantom_dataset(root / "data", domains=("siemens15", "ge3"), scans_per_domain=6, shape=(32, 32, 12))
    records = index_cc359(root / "data")
    manifest = write_manifest(records, root / "manifest.csv")
    write_splits(records, root / "splits.json")
    result = CliRunner().invoke(cli, ["train", "--data", str(manifest), "--splits", str(root / "splits.json"),
                                      "--source", "siemens15", "--out", str(root / "source"), *TINY])
    assert result.exit_code == 0, result.output
    return root


def _invoke(cli_runner, cli_app, args):
    result = cli_runner.invoke(cli_app, [str(a) for a in args])
    return result


def test_train_writes_a_finished_run_folder(project):
    run = project / "source"
    for name in ("config.yaml", "run.yaml", "log.txt", "metrics.csv", "checkpoint.pt", "summary.json", "scores.csv"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    splits = json.loads((project / "splits.json").read_text())
    spec = yaml.safe_load((run / "run.yaml").read_text())["spec"]
    assert spec["train_ids"] == splits["one2all"]["siemens15"]["train"]
    assert [r["id"] for r in summary["scores"]] == splits["one2all"]["siemens15"]["val"]
    assert 0.0 <= summary["mean"]["surface_dice_1mm"] <= 1.0


def test_adapt_first_layers_records_budget_and_freezes_the_rest(project, cli_runner, cli_app):
    out = project / "first-k4"
    result = _invoke(cli_runner, cli_app, ["adapt", "--model", project / "source", "--target", "ge3", "--layers",
                                           "first", "--scans", 1, "--slices", "1/4", "--out", out, *TINY])
    assert result.exit_code == 0, result.output
    run = yaml.safe_load((out / "run.yaml").read_text())["spec"]
    summary = json.loads((out / "summary.json").read_text())
    splits = json.loads((project / "splits.json").read_text())
    assert run["train_ids"] == summary["finetune_ids"] == splits["one2one"]["ge3"]["finetune"]["1"]
    assert run["eval_ids"] == splits["one2one"]["ge3"]["test"]["1"]
    assert summary["spec"]["budget"] == "1/4" and summary["spec"]["layers"] == "first"
    (scan,) = run["train_ids"]
    assert summary["slice_indices"][scan] == [0, 4, 8]  # 12 slices, comb {0, 4, 8}
    before = torch.load(project / "source" / "checkpoint.pt", weights_only=True)["model"]
    after = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    first = ("init_path.0.", "init_path.2.")
    changed = {k for k in after if after[k].dtype.is_floating_point and not torch.equal(before[k], after[k])}
    weights = {k for k in changed if not k.endswith(("running_mean", "running_var"))}
    assert weights and all(k.startswith(first) for k in weights), sorted(weights)[:5]
    # BatchNorm statistics of frozen layers keep updating (the reference behaviour)
    assert any(k.endswith("running_mean") and not k.startswith(first) for k in changed)


def test_finished_runs_are_skipped_and_predict_writes_nifti(project, cli_runner, cli_app):
    import nibabel as nib

    log_before = (project / "source" / "log.txt").read_text()
    again = _invoke(cli_runner, cli_app, ["train", "--data", project / "manifest.csv", "--splits",
                                          project / "splits.json", "--source", "siemens15", "--out",
                                          project / "source", *TINY])
    assert again.exit_code == 0, again.output
    assert (project / "source" / "log.txt").read_text() == log_before
    out = project / "pred"
    result = _invoke(cli_runner, cli_app, ["predict", "--model", project / "source", "--ids", "ge3", "--out", out,
                                           "--quiet"])
    assert result.exit_code == 0, result.output
    files = sorted((out / "predictions").glob("*.nii.gz"))
    assert len(files) == 6
    img = nib.load(str(files[0]))
    assert img.shape == (32, 32, 12) and set(np.unique(np.asarray(img.dataobj))) <= {0, 1}
    assert len(json.loads((out / "summary.json").read_text())["scores"]) == 6


@pytest.mark.parametrize("args, message", [
    (["--target", "philips3"], "philips3"),
    (["--target", "ge3", "--scans", "6"], "6-scan"),
    (["--target", "ge3", "--layers", "middle"], "valid groups"),
    (["--target", "ge3", "--slices", "2/3"], "1/k"),
])
def test_adapt_bad_input_is_one_line(project, cli_runner, cli_app, tmp_path, args, message):
    result = _invoke(cli_runner, cli_app, ["adapt", "--model", project / "source", *args, "--out", tmp_path / "x",
                                           *TINY])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_demo_quick_end_to_end(tmp_path):
    from fewshot_da.demo import run_demo

    lines = []
    result = run_demo(tmp_path / "demo", quick=True, progress=False, log=lines.append)
    rows = {(r["method"], r["budget"]): r for r in result["rows"]}
    label_free = {("adabn", "no labels"), ("histogram", "no labels"), ("src+aug", "no labels")}
    assert len(rows) == 11 and label_free <= set(rows)
    assert rows[("baseline", "-")]["gap_closed"] == pytest.approx(0.0) or np.isnan(rows[("baseline", "-")]["gap_closed"])
    oracle = rows[("oracle", "-")]["gap_closed"]
    assert oracle == pytest.approx(1.0) or np.isnan(oracle)
    for name in ("table.txt", "scores.csv", "demo.png", "manifest.csv", "splits.json"):
        assert (tmp_path / "demo" / name).is_file()
    assert "fewshot-da data index cc359" in lines[-1]
    # a second run reuses every finished run folder
    again = run_demo(tmp_path / "demo", quick=True, progress=False, log=lambda _: None)
    assert json.dumps(again["rows"]) == json.dumps(result["rows"])


def test_scanner_shift_changes_appearance_not_anatomy(tmp_path):
    from fewshot_da.data.io import load_volume
    from fewshot_da.data.shift import ScannerShift, shift_image, write_shifted_domain

    records = write_phantom_dataset(tmp_path / "d", domains=("siemens15",), scans_per_domain=3, shape=(24, 24, 10))
    image = load_volume(records[0].image).data
    a, b = shift_image(image, ScannerShift(), seed=1), shift_image(image, ScannerShift(), seed=1)
    assert np.array_equal(a, b) and not np.allclose(a, image)
    out = write_shifted_domain(records, [records[1].id], tmp_path / "shifted", domain="shifted")
    assert [r.domain for r in out].count("shifted") == 1 and len(out) == 3
    assert records[1].id not in {r.id for r in out}
    new = next(r for r in out if r.domain == "shifted")
    assert np.array_equal(load_volume(new.mask).data, load_volume(records[1].mask).data)


def test_data_merge_and_shift_verbs(tmp_path, cli_runner, cli_app):
    from fewshot_da.data.manifest import read_manifest

    a = write_phantom_dataset(tmp_path / "a", domains=("siemens15",), scans_per_domain=3, shape=(16, 16, 8))
    b = write_phantom_dataset(tmp_path / "b", domains=("ge3",), scans_per_domain=2, shape=(16, 16, 8))
    write_manifest(a, tmp_path / "a.csv")
    write_manifest(b, tmp_path / "b.csv")
    result = _invoke(cli_runner, cli_app, ["data", "merge", tmp_path / "a.csv", tmp_path / "b.csv",
                                           "--out", tmp_path / "ab.csv"])
    assert result.exit_code == 0, result.output
    assert [r.domain for r in read_manifest(tmp_path / "ab.csv")] == ["siemens15"] * 3 + ["ge3"] * 2
    dup = _invoke(cli_runner, cli_app, ["data", "merge", tmp_path / "a.csv", tmp_path / "a.csv", "--out",
                                        tmp_path / "x.csv"])
    assert dup.exit_code != 0 and "duplicate id" in dup.output
    result = _invoke(cli_runner, cli_app, ["data", "shift", tmp_path / "ab.csv", "--domain", "siemens15", "--n", 2,
                                           "--out-dir", tmp_path / "shifted", "--out", tmp_path / "abs.csv"])
    assert result.exit_code == 0, result.output
    domains = [r.domain for r in read_manifest(tmp_path / "abs.csv")]
    assert domains.count("siemens15") == 1 and domains.count("siemens15-shift") == 2
    too_many = _invoke(cli_runner, cli_app, ["data", "shift", tmp_path / "ab.csv", "--domain", "ge3", "--n", 2,
                                             "--out-dir", tmp_path / "s2", "--out", tmp_path / "y.csv"])
    assert too_many.exit_code != 0 and "would leave none" in too_many.output


@pytest.mark.slow
def test_real_data_ixi_shift_small(shared_data, tmp_path, cli_runner, cli_app):
    """A tiny version of README's real-data check: IXI subjects -> simulated scanner, first/last/all."""
    from fewshot_da.data.datasets import index_folder

    records = index_folder(shared_data / "ixi-hh", domain="ixi")[:12]
    write_manifest(records, tmp_path / "ixi.csv")
    steps = ["--epochs", "2", "--lr-steps", "0:0.1", "--iters-per-epoch", "10", "--batch-size", "4", "--crop", "128", "--quiet"]
    for args in (["data", "shift", tmp_path / "ixi.csv", "--domain", "ixi", "--n", 5, "--out-dir", tmp_path / "s",
                  "--out", tmp_path / "all.csv"],
                 ["data", "split", tmp_path / "all.csv", "--out", tmp_path / "splits.json"],
                 ["train", "--data", tmp_path / "all.csv", "--splits", tmp_path / "splits.json", "--source", "ixi",
                  "--reorient-ras", "--spacing-mm", 2, 2, 2, "--out", tmp_path / "src", *steps]):
        result = _invoke(cli_runner, cli_app, args)
        assert result.exit_code == 0, result.output
    for layers in ("first", "last", "all"):
        result = _invoke(cli_runner, cli_app, ["adapt", "--model", tmp_path / "src", "--target", "ixi-shift",
                                               "--layers", layers, "--out", tmp_path / layers, *steps])
        assert result.exit_code == 0, result.output
        summary = json.loads((tmp_path / layers / "summary.json").read_text())
        assert len(summary["scores"]) == 4 and 0 <= summary["mean"]["surface_dice_1mm"] <= 1


def test_predict_original_grid_then_eval_against_the_cc359_mask_folder(project, cli_runner, cli_app, tmp_path):
    out = tmp_path / "pred"
    result = _invoke(cli_runner, cli_app, ["predict", "--model", project / "source", "--ids", "ge3", "--out", out,
                                           "--original-grid", "--quiet"])
    assert result.exit_code == 0, result.output
    predicted = json.loads((out / "summary.json").read_text())["mean"]["surface_dice_1mm"]
    # CC0300.nii.gz predictions match CC0300_ge_3_.._ss.nii.gz masks; the 6 siemens15 masks are reported unscored
    result = _invoke(cli_runner, cli_app, ["eval", "--gt", project / "data" / "masks", "--pred", out / "predictions",
                                           "--out", tmp_path / "eval"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["n_gt_unscored"] == 6 and len(summary["per_case"]) == 6
    assert summary["mean"]["surface_dice_1mm"] == pytest.approx(predicted, abs=1e-6)  # phantoms: 1 mm grid kept
    (out / "predictions" / "CC9999.nii.gz").write_bytes((out / "predictions" / "CC0300.nii.gz").read_bytes())
    result = _invoke(cli_runner, cli_app, ["eval", "--gt", project / "data" / "masks", "--pred", out / "predictions"])
    assert result.exit_code != 0 and "no ground truth" in result.output
