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
