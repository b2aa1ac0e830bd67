"""`fewshot-da eval` on real IXI masks vs perturbed copies, and its one-line errors for bad input."""

import csv
import json
import math
import shutil

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from fewshot_da.errors import InputError
from fewshot_da.metrics import score_case
from fewshot_da.metrics.evaluate import case_id, evaluate_paths

IXI_CASES = ["IXI012-HH-1211", "IXI013-HH-1212", "IXI014-HH-1236"]


@pytest.fixture
def ixi_pair(shared_data, tmp_path):
    """gt/ = three real IXI brain masks; pred/ = the same masks eroded, dilated or shifted, nnU-Net names."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    for k, case in enumerate(IXI_CASES):
        src = shared_data / "ixi-hh" / "masks" / f"{case}_brain.nii.gz"
        shutil.copy(src, gt_dir / src.name)
        image = nib.load(str(src))
        mask = np.asanyarray(image.dataobj) > 0
        perturbed = [ndimage.binary_erosion(mask), ndimage.binary_dilation(mask), np.roll(mask, 1, axis=k)][k]
        nib.save(
            nib.Nifti1Image(perturbed.astype(np.uint8), image.affine, image.header),
            pred_dir / f"{case}.nii.gz",
        )
    return gt_dir, pred_dir


def test_case_ids():
    # CC359 file stems reduce to the manifest id, so `predict` outputs (CC0001.nii.gz) match the _ss masks
    assert case_id("CC0001_philips_15_55_M_ss.nii.gz") == "CC0001"
    assert case_id("CC0001_philips_15_55_M.nii.gz") == "CC0001"
    assert case_id("CC0001.nii.gz") == "CC0001"
    assert case_id("/x/case_017_0000.nii.gz") == "case_017"
    assert case_id("case_017.nii") == "case_017"
    assert case_id("IXI012-HH-1211_brain.nii.gz") == "IXI012-HH-1211"
    assert case_id("sub_2015.nii.gz") == "sub_2015"  # only the nnU-Net channel suffix _0000 is dropped


def test_eval_ixi_folders(cli_runner, cli_app, ixi_pair, tmp_path):
    gt_dir, pred_dir = ixi_pair
    out = tmp_path / "out"
    result = cli_runner.invoke(
        cli_app,
        [
            "eval",
            "--gt",
            str(gt_dir),
            "--pred",
            str(pred_dir),
            "--tolerance",
            "1",
            "--tolerance",
            "2",
            "--out",
            str(out),
            "--num-threads",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "mean ± sd" in result.output and IXI_CASES[0] in result.output
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == IXI_CASES
    assert list(rows[0]) == ["case", "dice", "surface_dice_1mm", "surface_dice_2mm", "hd95_mm", "assd_mm"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"]["dice"] == 3 and summary["n_nan"]["surface_dice_1mm"] == 0
    # values equal the library on the same arrays (header spacing 2 mm)
    image = nib.load(str(gt_dir / f"{IXI_CASES[0]}_brain.nii.gz"))
    mask = np.asanyarray(image.dataobj) > 0
    expected = score_case(mask, ndimage.binary_erosion(mask), spacing_mm=(2, 2, 2), tolerances_mm=(1, 2))
    for key, value in expected.items():
        assert float(rows[0][key]) == pytest.approx(value, abs=1e-12)
    assert float(rows[0]["surface_dice_1mm"]) < float(rows[0]["surface_dice_2mm"]) <= 1.0
    mean_dice = np.mean([float(r["dice"]) for r in rows])
    assert summary["mean"]["dice"] == pytest.approx(mean_dice)


def test_eval_single_files_with_label_and_empty(tmp_path, cli_runner, cli_app):
    affine = np.diag([1.0, 1.0, 1.5, 1.0])
    labels = np.zeros((10, 10, 8), np.int16)
    labels[2:6, 2:6, 2:5] = 2
    labels[6:8, 6:8, 5:7] = 1
    nib.save(nib.Nifti1Image(labels, affine), tmp_path / "a.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros_like(labels), affine), tmp_path / "b.nii.gz")
    summary = evaluate_paths(tmp_path / "a.nii.gz", tmp_path / "a.nii.gz", tolerances_mm=[1], label=2)
    assert summary["per_case"][0]["surface_dice_1mm"] == 1.0
    result = cli_runner.invoke(
        cli_app,
        [
            "eval",
            "--gt",
            str(tmp_path / "a.nii.gz"),
            "--pred",
            str(tmp_path / "b.nii.gz"),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["per_case"][0]["surface_dice_1mm"] == 0.0  # one empty mask
    assert summary["per_case"][0]["hd95_mm"] is None and summary["n_inf"]["hd95_mm"] == 1


def _write(path, data, affine=None):
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return str(path)


def test_bad_inputs_give_one_line_errors(tmp_path, cli_runner, cli_app):
    ok = np.zeros((6, 6, 6), np.uint8)
    ok[2:4, 2:4, 2:4] = 1
    a = _write(tmp_path / "a.nii.gz", ok)
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    nan = ok.astype(np.float32)
    nan[0, 0, 0] = np.nan
    (tmp_path / "gtdir").mkdir()
    (tmp_path / "preddir").mkdir()
    _write(tmp_path / "gtdir" / "x_ss.nii.gz", ok)
    _write(tmp_path / "preddir" / "y.nii.gz", ok)
    cases = {
        "no such file": [a, str(tmp_path / "missing.nii.gz")],
        "shapes differ": [a, _write(tmp_path / "b.nii.gz", np.zeros((6, 6, 5), np.uint8))],
        "affines differ": [a, _write(tmp_path / "c.nii.gz", ok, shifted)],
        "NaN": [a, _write(tmp_path / "d.nii.gz", nan)],
        "2D or 3D": [a, _write(tmp_path / "e.nii.gz", ok[..., None].repeat(2, axis=3))],
        "no matching case ids": [str(tmp_path / "gtdir"), str(tmp_path / "preddir")],
        "both be files or both be folders": [a, str(tmp_path / "preddir")],
    }
    for message, (gt, pred) in cases.items():
        result = cli_runner.invoke(cli_app, ["eval", "--gt", gt, "--pred", pred])
        assert result.exit_code != 0, message
        assert message in result.output, (message, result.output)
        error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(error_lines) == 1 and "Traceback" not in result.output, result.output
    with pytest.raises(InputError, match="tolerance"):
        evaluate_paths(a, a, tolerances_mm=[math.nan])


def _csv_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_workers_and_metrics_selection(cli_runner, cli_app, ixi_pair, tmp_path):
    gt_dir, pred_dir = ixi_pair
    outputs = {}
    for workers in (1, 3):
        out = tmp_path / f"w{workers}"
        args = ["eval", "--gt", str(gt_dir), "--pred", str(pred_dir), "--tolerance", "1", "--tolerance", "2",
                "--workers", str(workers), "--out", str(out)]
        result = cli_runner.invoke(cli_app, args)
        assert result.exit_code == 0, result.output
        outputs[workers] = (out / "metrics.csv").read_text()
    assert outputs[1] == outputs[3]  # same cases, same order, same values
    out = tmp_path / "hd"
    result = cli_runner.invoke(
        cli_app, ["eval", "--gt", str(gt_dir), "--pred", str(pred_dir), "--metrics", "hd95,dice", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    rows = _csv_rows(out / "metrics.csv")
    assert list(rows[0]) == ["case", "dice", "hd95_mm"]
    full = _csv_rows(tmp_path / "w1" / "metrics.csv")
    assert [r["hd95_mm"] for r in rows] == [r["hd95_mm"] for r in full]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"] == ["dice", "hd95"] and set(summary["mean"]) == {"dice", "hd95_mm"}
    bad = cli_runner.invoke(cli_app, ["eval", "--gt", str(gt_dir), "--pred", str(pred_dir), "--metrics", "hd99"])
    assert bad.exit_code != 0 and "--metrics" in bad.output and "hd99" in bad.output
    assert "Traceback" not in bad.output


def test_probability_maps_need_threshold(cli_runner, cli_app, tmp_path):
    rng = np.random.default_rng(0)
    prob = ndimage.gaussian_filter(rng.random((12, 12, 10)), 2).astype(np.float32)
    prob = (prob - prob.min()) / (prob.max() - prob.min())
    gt = _write(tmp_path / "gt.nii.gz", (prob > 0.5).astype(np.uint8))
    pred = _write(tmp_path / "prob.nii.gz", prob)
    result = cli_runner.invoke(cli_app, ["eval", "--gt", gt, "--pred", pred])
    assert result.exit_code != 0
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and "prob.nii.gz" in error_lines[0] and "--threshold" in error_lines[0]
    summary = evaluate_paths(gt, pred, threshold=0.5)
    assert summary["per_case"][0]["dice"] == 1.0 and summary["threshold"] == 0.5
    summary = evaluate_paths(gt, pred, threshold=0.7)
    assert summary["per_case"][0]["dice"] < 1.0
    with pytest.raises(InputError, match="exclude"):
        evaluate_paths(gt, pred, threshold=0.5, label=1)
    # a float file holding only integers is a label map, not a probability map
    as_float = _write(tmp_path / "float01.nii.gz", (prob > 0.5).astype(np.float32))
    assert evaluate_paths(gt, as_float)["per_case"][0]["dice"] == 1.0


def test_absent_label_warns_and_is_counted(cli_runner, cli_app, tmp_path):
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[2:5, 2:5, 2:5] = 1
    a, b = _write(tmp_path / "a.nii.gz", mask), _write(tmp_path / "b.nii.gz", mask * 2)
    out = tmp_path / "o"
    result = cli_runner.invoke(cli_app, ["eval", "--gt", a, "--pred", b, "--label", "5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "absent" in line]
    assert len(warnings) == 1 and "label 5" in warnings[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_label_absent"] == 1 and summary["label_absent_cases"] == ["a"]
    result = cli_runner.invoke(cli_app, ["eval", "--gt", a, "--pred", b, "--label", "1"])
    assert result.exit_code == 0 and "absent" not in result.stderr


def test_png_masks_report_pixel_error_and_ari(cli_runner, cli_app, tmp_path):
    from PIL import Image

    from fewshot_da.metrics import adjusted_rand_index, dice, pixel_error, surface_dice

    rng = np.random.default_rng(3)
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    pairs = {}
    for k in range(3):
        gt = ndimage.binary_dilation(rng.random((40, 50)) < 0.01, iterations=4)
        pred = np.roll(gt, k, axis=1)
        Image.fromarray(gt.astype(np.uint8) * 255).save(tmp_path / "gt" / f"img{k}_mask.png")
        Image.fromarray(pred.astype(np.uint8) * 255).save(tmp_path / "pred" / f"img{k}.png")
        pairs[f"img{k}"] = (gt, pred)
    out = tmp_path / "out"
    result = cli_runner.invoke(
        cli_app, ["eval", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    rows = _csv_rows(out / "metrics.csv")
    assert list(rows[0]) == ["case", "dice", "surface_dice_1mm", "hd95_mm", "assd_mm", "pixel_error_pct", "ari"]
    for row in rows:
        gt, pred = pairs[row["case"]]
        assert float(row["dice"]) == pytest.approx(dice(gt, pred), abs=1e-12)
        assert float(row["pixel_error_pct"]) == pytest.approx(100 * pixel_error(gt, pred), abs=1e-12)
        assert float(row["ari"]) == pytest.approx(adjusted_rand_index(gt, pred), abs=1e-12)
        assert float(row["surface_dice_1mm"]) == pytest.approx(
            surface_dice(gt, pred, spacing_mm=(1, 1), tolerance_mm=1), abs=1e-12
        )
    assert float(rows[0]["pixel_error_pct"]) == 0.0 and float(rows[1]["pixel_error_pct"]) > 0


def test_corrupted_gzip_is_named(cli_runner, cli_app, tmp_path):
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[5:15, 5:15, 5:15] = 1
    a = _write(tmp_path / "a.nii.gz", mask)
    raw = bytearray((tmp_path / "a.nii.gz").read_bytes())
    raw[-6] ^= 0xFF  # inside the CRC32 / length trailer, which nibabel alone never reads
    (tmp_path / "bad.nii.gz").write_bytes(bytes(raw))
    result = cli_runner.invoke(cli_app, ["eval", "--gt", a, "--pred", str(tmp_path / "bad.nii.gz")])
    assert result.exit_code != 0 and "bad.nii.gz" in result.output and "Traceback" not in result.output


def test_cli_start_up_does_not_import_torch_or_numpy():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = f"""
import importlib.util, sys, time
t0 = time.perf_counter()
spec = importlib.util.spec_from_file_location(
    "fewshot_da_cli", {str(root / 'cli' / '__init__.py')!r}, submodule_search_locations=[{str(root / 'cli')!r}])
module = importlib.util.module_from_spec(spec)
sys.modules["fewshot_da_cli"] = module
spec.loader.exec_module(module)
from fewshot_da_cli.main import cli
for args in (["--help"], ["eval", "--help"]):
    try:
        cli(args, standalone_mode=False)
    except SystemExit:
        pass
heavy = sorted(m for m in ("torch", "numpy", "nibabel", "scipy") if m in sys.modules)
print("HEAVY", heavy, "SECONDS", time.perf_counter() - t0)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=root, timeout=120
    )
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("HEAVY"))
    assert line.startswith("HEAVY []"), line


def test_cli_metric_names_match_the_library():
    from fewshot_da_cli import commands_metrics

    from fewshot_da.metrics import METRICS

    assert commands_metrics._METRICS.split(",") == list(METRICS)
