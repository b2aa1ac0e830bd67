"""`fewshot-da eval`: the threshold binarises predictions only, labels held only by predictions, empty ground
truth counted, and images lying beside the ground-truth masks skipped (issues 22 and 23)."""

import json

import nibabel as nib
import numpy as np
import pytest

from fewshot_da.errors import InputError
from fewshot_da.metrics.evaluate import evaluate_paths


def _write(path, data):
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4)), str(path))
    return str(path)


def _cube(lo=2, hi=6, shape=(10, 10, 10)):
    mask = np.zeros(shape, np.uint8)
    mask[lo:hi, lo:hi, lo:hi] = 1
    return mask


def _errors(result):
    return [line for line in result.output.splitlines() if line.startswith("Error:")]


def test_threshold_binarises_the_prediction_only(tmp_path, cli_runner, cli_app):
    # gt: a 4^3 cube stored 0/1; pred: a 4x4x3 part of it stored 0/200 (a network's 8-bit output).
    # Dice = 2 * 48 / (64 + 48) = 0.857142...; thresholding the 0/1 gt at 100 would empty it (Dice 0).
    gt = _write(tmp_path / "gt.nii.gz", _cube())
    pred = np.zeros((10, 10, 10), np.uint8)
    pred[2:6, 2:6, 2:5] = 200
    pred_path = _write(tmp_path / "pred.nii.gz", pred)
    out = tmp_path / "o"
    result = cli_runner.invoke(cli_app, ["eval", "--gt", gt, "--pred", pred_path, "--threshold", "100",
                                         "--out", str(out), "--num-threads", "1"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["per_case"][0]["dice"] == pytest.approx(2 * 48 / (64 + 48))
    assert summary["n_gt_empty"] == 0 and "empty" not in result.stderr


def test_ground_truth_probability_map_is_refused_with_the_right_advice(tmp_path):
    gt = _write(tmp_path / "gt.nii.gz", _cube().astype(np.float32) * 0.7)
    pred = _write(tmp_path / "pred.nii.gz", _cube().astype(np.float32) * 0.9)
    with pytest.raises(InputError, match=r"gt\.nii\.gz: .*non-integer.*--threshold applies to predictions only"):
        evaluate_paths(gt, pred, threshold=0.5)


def test_empty_ground_truth_is_warned_about_and_counted(tmp_path, cli_runner, cli_app):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir(), pred_dir.mkdir()
    _write(gt_dir / "a.nii.gz", _cube())
    _write(gt_dir / "b.nii.gz", np.zeros((10, 10, 10), np.uint8))
    _write(pred_dir / "a.nii.gz", _cube())
    _write(pred_dir / "b.nii.gz", _cube(3, 5))
    out = tmp_path / "o"
    result = cli_runner.invoke(cli_app, ["eval", "--gt", str(gt_dir), "--pred", str(pred_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and "ground truth is empty in 1 case(s) (first 'b')" in warnings[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_gt_empty"] == 1 and summary["gt_empty_cases"] == ["b"]
    assert "ground truth empty in 1 case(s)" in result.stdout


def test_label_held_only_by_the_prediction_is_refused(tmp_path, cli_runner, cli_app):
    # gt labels 0/1, pred 0/2: --label 2 would empty every ground truth and score it anyway.
    gt = _write(tmp_path / "gt.nii.gz", _cube())
    pred = _write(tmp_path / "pred.nii.gz", _cube() * 2)
    result = cli_runner.invoke(cli_app, ["eval", "--gt", gt, "--pred", pred, "--label", "2"])
    assert result.exit_code != 0
    (line,) = _errors(result)
    assert "--label 2: no ground-truth mask holds it" in line and "gt.nii.gz holds labels 1" in line
    assert "Traceback" not in result.output


def test_label_missing_from_some_ground_truth_is_warned_and_counted(tmp_path, cli_runner, cli_app):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir(), pred_dir.mkdir()
    _write(gt_dir / "a.nii.gz", _cube() * 2)
    _write(pred_dir / "a.nii.gz", _cube() * 2)
    _write(gt_dir / "b.nii.gz", _cube())  # label 1 only
    _write(pred_dir / "b.nii.gz", _cube() * 2)
    out = tmp_path / "o"
    result = cli_runner.invoke(cli_app, ["eval", "--gt", str(gt_dir), "--pred", str(pred_dir), "--label", "2",
                                         "--out", str(out)])
    assert result.exit_code == 0, result.output
    (warning,) = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert "(first 'b')" in warning and "label 2 is only in the prediction in 1 of them" in warning
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_label_only_in_pred"] == 1 and summary["label_only_in_pred_cases"] == ["b"]
    assert [r["dice"] for r in summary["per_case"]] == [1.0, 0.0]


def test_images_beside_ground_truth_masks_are_skipped(tmp_path, cli_runner, cli_app):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir(), pred_dir.mkdir()
    image = np.random.default_rng(0).random((10, 10, 10)).astype(np.float32)
    layout = {"s1": ("s1_mask.nii.gz", "s1_t1.nii.gz"),  # image tagged _t1 beside a _mask
              "s2": ("s2_seg.nii.gz", "s2_image.nii.gz"),  # the word image
              "s3": ("s3.nii.gz", "s3_0000.nii.gz"),  # nnU-Net: channel file beside the label
              "s4": ("s4_brain.nii.gz", "s4.nii.gz")}  # IXI: image beside its _brain mask
    for case, (mask_name, image_name) in layout.items():
        _write(gt_dir / mask_name, _cube())
        _write(gt_dir / image_name, image)
        _write(pred_dir / f"{case}.nii.gz", _cube())
    out = tmp_path / "o"
    result = cli_runner.invoke(cli_app, ["eval", "--gt", str(gt_dir), "--pred", str(pred_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert [r["case"] for r in summary["per_case"]] == ["s1", "s2", "s3", "s4"]
    assert summary["n_gt_unscored"] == 0 and "without a prediction" not in result.output
    assert sorted(summary["gt_images_skipped"]) == sorted(image for _, image in layout.values())
    (note,) = [line for line in result.stderr.splitlines() if line.startswith("Note:")]
    assert "skipped 4 image file(s) beside the masks" in note and "a file is an image when" in note


def test_image_rule_keeps_masks_with_image_like_names(tmp_path):
    from fewshot_da.metrics.evaluate import image_files

    # without mask-named files in the folder, a name with the word img is a mask (predictions named after images)
    names = ["img_001.nii.gz", "img_002.nii.gz"]
    assert image_files([tmp_path / n for n in names]) == []
    # a lone nnU-Net channel name and plain case ids are masks too
    assert image_files([tmp_path / "case_017_0000.nii.gz", tmp_path / "case_018.nii.gz"]) == []
    assert image_files([tmp_path / "x_mask.png", tmp_path / "img_x.png", tmp_path / "y_mask.png"]) == \
        [tmp_path / "img_x.png"]
    # a numeric tag is a case index, not a sequence name: x_2 beside x_mask stays a mask
    assert image_files([tmp_path / "x_mask.nii.gz", tmp_path / "x_2.nii.gz", tmp_path / "x_t1.nii.gz"]) == \
        [tmp_path / "x_t1.nii.gz"]


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_eval_tolerance_has_the_rule_of_every_verb(tmp_path, cli_runner, cli_app, value):
    """One validator (metrics.scoring.check_tolerances): finite and > 0, in eval as in train/adapt/predict."""
    gt = _write(tmp_path / "gt.nii.gz", _cube())
    result = cli_runner.invoke(cli_app, ["eval", "--gt", gt, "--pred", gt, "--tolerance", value])
    errors = _errors(result)
    assert result.exit_code != 0 and len(errors) == 1 and f"--tolerance {value}" in errors[0]
    assert "finite number of mm > 0" in errors[0]


def test_a_2d_png_mask_is_scored_against_its_one_slice_nifti_prediction(tmp_path, cli_runner, cli_app):
    """predict writes a 2D image's mask as an (H, W, 1) NIfTI; eval scores it against the (H, W) PNG ground truth
    (found as a new user would, on BUS-BRA); other shape differences are still refused."""
    from PIL import Image

    gt = np.zeros((16, 16), np.uint8)
    gt[4:12, 4:12] = 255
    (tmp_path / "gt").mkdir()
    Image.fromarray(gt).save(tmp_path / "gt" / "case1_mask.png")
    (tmp_path / "pred").mkdir()
    pred = (gt > 0).astype(np.uint8)[:, :, None].copy()
    pred[4:12, 4:8] = 0  # half of the lesion: Dice 2 * 32 / (64 + 32)
    _write(tmp_path / "pred" / "case1.nii.gz", pred)
    out = tmp_path / "o"
    result = cli_runner.invoke(cli_app, ["eval", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"),
                                         "--out", str(out), "--num-threads", "1"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mean"]["dice"] == pytest.approx(64 / 96)
    _write(tmp_path / "pred" / "case1.nii.gz", np.zeros((16, 8, 1), np.uint8))
    result = cli_runner.invoke(cli_app, ["eval", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred")])
    assert result.exit_code != 0 and "shapes differ" in _errors(result)[0]
