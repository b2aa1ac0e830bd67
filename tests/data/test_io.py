"""Bad input gives one-line InputErrors naming the file; PNG images are one-slice volumes."""
import gzip

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from fewshot_da.data.io import load_mask, load_volume
from fewshot_da.data.manifest import Record
from fewshot_da.data.preprocess import PreprocessOptions, preprocess_record
from fewshot_da.data.splits import make_splits
from fewshot_da.errors import InputError


def _save(path, data, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return str(path)


def _raises_one_line(match, func, *args, **kwargs):
    with pytest.raises(InputError, match=match) as info:
        func(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_unreadable_and_corrupt_nifti(tmp_path):
    _raises_one_line("missing.nii.gz: file not found", load_volume, tmp_path / "missing.nii.gz")
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(b"not a nifti header" * 10))
    _raises_one_line("garbage.nii.gz: cannot read NIfTI", load_volume, garbage)
    good = _save(tmp_path / "good.nii", np.zeros((8, 8, 8), np.float32))
    truncated = tmp_path / "truncated.nii"
    truncated.write_bytes(open(good, "rb").read()[:500])
    _raises_one_line("truncated.nii: cannot read NIfTI", load_volume, truncated)


def test_4d_and_nan(tmp_path):
    _raises_one_line(r"four.nii.gz: expected a 3D volume, got shape \(4, 4, 4, 2\)", load_volume,
                     _save(tmp_path / "four.nii.gz", np.zeros((4, 4, 4, 2), np.float32)))
    assert load_volume(_save(tmp_path / "singleton.nii.gz", np.zeros((4, 4, 4, 1), np.float32))).data.shape == (4, 4, 4)
    data = np.zeros((4, 4, 4), np.float32)
    data[1, 2, 3] = np.nan
    _raises_one_line("nan.nii.gz: 1 NaN/inf intensities", load_volume, _save(tmp_path / "nan.nii.gz", data))


def test_non_binary_mask(tmp_path):
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[0, 0, :2] = [1, 2]
    _raises_one_line(r"labels.nii.gz: mask is not binary \(values 0, 1, 2\)", load_mask,
                     _save(tmp_path / "labels.nii.gz", labels))


def test_png_is_a_one_slice_volume_and_mask_255_is_binary(tmp_path):
    Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4)).save(tmp_path / "img.png")
    Image.fromarray(np.array([[0, 255, 0, 255]] * 3, dtype=np.uint8)).save(tmp_path / "img_mask.png")
    volume = load_volume(tmp_path / "img.png")
    assert volume.data.shape == (3, 4, 1) and volume.spacing_mm == (1.0, 1.0, 1.0)
    assert load_mask(tmp_path / "img_mask.png").data[:, :, 0].tolist() == [[0, 1, 0, 1]] * 3
    Image.fromarray(np.array([[0, 128]], dtype=np.uint8)).save(tmp_path / "grey_mask.png")
    _raises_one_line("grey_mask.png: mask is not binary", load_mask, tmp_path / "grey_mask.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    _raises_one_line("broken.png: cannot read image", load_volume, tmp_path / "broken.png")


def test_png_pixel_spacing_from_the_manifest(tmp_path):
    Image.fromarray(np.zeros((3, 4), dtype=np.uint8)).save(tmp_path / "img.png")
    Image.fromarray(np.zeros((3, 4), dtype=np.uint8)).save(tmp_path / "img_mask.png")
    for given, expected in [((0.2, 0.3), (0.2, 0.3, 1.0)), ((0.5,), (0.5, 0.5, 1.0)), ((0.2, 0.3, 2.0), (0.2, 0.3, 2.0))]:
        volume = load_volume(tmp_path / "img.png", spacing_mm=given)
        assert volume.spacing_mm == expected
        np.testing.assert_array_equal(volume.affine, np.diag([*expected, 1.0]))
        assert load_mask(tmp_path / "img_mask.png", spacing_mm=given).spacing_mm == expected
    _raises_one_line(r"img.png: pixel spacing 1 1 1 1 mm must be 1-3 positive numbers", load_volume,
                     tmp_path / "img.png", spacing_mm=(1, 1, 1, 1))
    _raises_one_line(r"img.png: pixel spacing 0 1 mm", load_volume, tmp_path / "img.png", spacing_mm=(0, 1))
    # a NIfTI header's spacing counts; the manifest's value is not applied to it
    nifti = _save(tmp_path / "v.nii.gz", np.zeros((4, 4, 4), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    assert load_volume(nifti, spacing_mm=(1, 1, 1)).spacing_mm == (2.0, 2.0, 2.0)


def test_image_mask_mismatch(tmp_path):
    image = _save(tmp_path / "img.nii.gz", np.ones((6, 6, 6), np.float32))
    small = _save(tmp_path / "small_ss.nii.gz", np.zeros((6, 6, 5), np.uint8))
    shifted = _save(tmp_path / "shifted_ss.nii.gz", np.zeros((6, 6, 6), np.uint8), np.diag([2.0, 1, 1, 1]))
    options = PreprocessOptions(target_spacing_mm=None)
    _raises_one_line(r"small_ss.nii.gz: mask shape \(6, 6, 5\) differs from image shape \(6, 6, 6\)",
                     preprocess_record, Record("x", image, small, "d"), options)
    _raises_one_line("shifted_ss.nii.gz: mask affine differs", preprocess_record,
                     Record("x", image, shifted, "d"), options)


def test_splits_reject_empty_domain_and_no_scans():
    _raises_one_line("a.nii: scan a has an empty domain", make_splits, [Record("a", "a.nii", "a_ss.nii", "")])
    _raises_one_line("no scans", make_splits, [])
