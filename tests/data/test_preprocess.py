"""Preprocessing numbers (grid, spacing, range, dtype), the reference recipe, the cache, write-back."""
import os
import time

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from fewshot_da.data import preprocess as pp
from fewshot_da.data import cache as pp_cache
from fewshot_da.data import resample as pp_resample
from fewshot_da.data.datasets import index_folder, index_images2d
from fewshot_da.data.manifest import Record
from fewshot_da.data.phantoms import phantom_volume
from fewshot_da.data.preprocess import PRESETS, PreprocessOptions, save_prediction_nifti
from fewshot_da.data.cache import preprocess_manifest


@pytest.fixture
def anisotropic_scan(tmp_path):
    """A (20, 16, 12) phantom at (1.0, 1.5, 2.0) mm."""
    image, mask = phantom_volume((20, 16, 12), domain="ge15", seed=1)
    affine = np.diag([1.0, 1.5, 2.0, 1.0])
    affine[:3, 3] = [-10, -12, -12]
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "scan.nii.gz"))
    nib.save(nib.Nifti1Image(mask, affine), str(tmp_path / "scan_ss.nii.gz"))
    return Record("scan", str(tmp_path / "scan.nii.gz"), str(tmp_path / "scan_ss.nii.gz"), "ge15")


def test_paper_preset_grid_range_and_reference_recipe(anisotropic_scan, tmp_path):
    (volume,) = preprocess_manifest([anisotropic_scan], tmp_path / "cache", PRESETS["paper"], progress=False)
    # zoom factors old/new = (1, 1.5, 2) -> array shape (20, 24, 24); slices along the last axis first
    assert volume.image.shape == (24, 20, 24) and volume.mask.shape == (24, 20, 24)
    assert volume.spacing_mm == (1.0, 1.0, 1.0)
    assert volume.image.dtype == np.float32 and volume.mask.dtype == np.uint8
    assert isinstance(volume.image, np.memmap) and volume.image.flags.c_contiguous
    assert volume.image.min() == 0.0 and volume.image.max() == 1.0
    assert set(np.unique(volume.mask)) <= {0, 1}

    raw = nib.load(anisotropic_scan.image).get_fdata()
    expected = ndimage.zoom(raw, (1.0, 1.5, 2.0), order=3)
    expected = np.clip(expected, *np.percentile(expected, [1, 99]))
    expected = (expected - expected.min()) / (expected - expected.min()).max()
    np.testing.assert_allclose(volume.to_array_order(volume.image), expected, atol=1e-6)
    raw_mask = nib.load(anisotropic_scan.mask).get_fdata()
    expected_mask = ndimage.zoom(raw_mask, (1.0, 1.5, 2.0), order=3) >= 0.5
    assert np.array_equal(volume.to_array_order(volume.mask), expected_mask)
    # the affine maps the zoomed grid onto the same world box: corner voxels coincide (scipy zoom)
    far_corner = volume.affine @ [19, 23, 23, 1]
    np.testing.assert_allclose(far_corner[:3], (nib.load(anisotropic_scan.image).affine @ [19, 15, 11, 1])[:3])


def test_dart20_code_preset(anisotropic_scan, tmp_path):
    (volume,) = preprocess_manifest([anisotropic_scan], tmp_path / "cache", PRESETS["dart20-code"], progress=False)
    # factors (1, 1.5/0.95, 2/0.95) -> (20, 25, 25); slice-major (25, 20, 25), spacing in the same order
    assert volume.image.shape == (25, 20, 25)
    assert volume.spacing_mm == (0.95, 1.0, 0.95)
    assert volume.image.dtype == np.float16
    assert float(volume.image.max()) == 1.0


def test_slice_axis_and_no_resampling(anisotropic_scan, tmp_path):
    options = PreprocessOptions(target_spacing_mm=None, slice_axis=0)
    (volume,) = preprocess_manifest([anisotropic_scan], tmp_path / "cache", options, progress=False)
    assert volume.image.shape == (20, 16, 12) and volume.spacing_mm == (1.0, 1.5, 2.0)
    assert volume.to_array_order(volume.mask).shape == (20, 16, 12)
    np.testing.assert_allclose(volume.affine, volume.original_affine)


def test_cache_is_reused_without_recomputation(anisotropic_scan, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    (first,) = preprocess_manifest([anisotropic_scan], cache, PRESETS["paper"], progress=False)
    stamp = os.stat(os.path.join(first.path, "image.npy")).st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("recomputed a cached scan")

    monkeypatch.setattr(pp_cache, "preprocess_record", fail)
    (second,) = preprocess_manifest([anisotropic_scan], cache, PRESETS["paper"], num_workers=2, progress=False)
    assert second.path == first.path
    assert os.stat(os.path.join(second.path, "image.npy")).st_mtime_ns == stamp
    assert [p.name for p in cache.iterdir()] == [os.path.basename(first.path)]  # no temp folders left
    # other options or a rewritten input file -> a new entry
    assert (pp_cache._entry_dir(cache, anisotropic_scan, PRESETS["dart20-code"])
            != pp_cache._entry_dir(cache, anisotropic_scan, PRESETS["paper"]))
    content = PRESETS["paper"].replace(cache_key="content")
    before = (pp_cache.cache_key(anisotropic_scan, PRESETS["paper"]), pp_cache.cache_key(anisotropic_scan, content))
    os.utime(anisotropic_scan.image, ns=(stamp + 10**9, stamp + 10**9))
    after = (pp_cache.cache_key(anisotropic_scan, PRESETS["paper"]), pp_cache.cache_key(anisotropic_scan, content))
    assert before[0] != after[0] and before[1] == after[1]


def test_parallel_workers_match_inline(tmp_path, anisotropic_scan):
    other = Record("other", anisotropic_scan.image, anisotropic_scan.mask, "ge15")
    options = PreprocessOptions(target_spacing_mm=(2.0, 2.0, 2.0))
    inline = preprocess_manifest([anisotropic_scan], tmp_path / "a", options, num_workers=1, progress=False)
    parallel = preprocess_manifest([anisotropic_scan, other], tmp_path / "b", options, num_workers=2, progress=False)
    assert [v.id for v in parallel] == ["scan", "other"]
    assert np.array_equal(inline[0].image, parallel[0].image) and np.array_equal(parallel[0].image, parallel[1].image)


def test_prediction_write_back(anisotropic_scan, tmp_path):
    (volume,) = preprocess_manifest([anisotropic_scan], tmp_path / "cache", PRESETS["paper"], progress=False)
    grid = save_prediction_nifti(volume, volume.mask, tmp_path / "pred.nii.gz")
    img = nib.load(str(grid))
    assert img.shape == (20, 24, 24)
    np.testing.assert_allclose(img.affine, volume.affine, atol=1e-5)
    back = save_prediction_nifti(volume, volume.mask, tmp_path / "pred_orig.nii.gz", original_grid=True)
    img = nib.load(str(back))
    original = nib.load(anisotropic_scan.mask).get_fdata() > 0
    assert img.shape == (20, 16, 12)
    predicted = img.get_fdata() > 0
    assert 2 * (predicted & original).sum() / (predicted.sum() + original.sum()) > 0.95


def test_ixi_volume_and_ras_reorientation(shared_data, tmp_path):
    (record,) = index_folder(shared_data / "ixi-hh")[:1]
    start = time.perf_counter()
    (volume,) = preprocess_manifest([record], tmp_path / "cache", PreprocessOptions(target_spacing_mm=(4, 4, 4)),
                                    progress=False)
    assert time.perf_counter() - start < 20
    assert volume.image.shape == (45, 60, 60) and volume.spacing_mm == (4.0, 4.0, 4.0)  # 120x120x90 at 2 mm
    assert 0.05 < volume.mask.mean() < 0.5
    head = index_folder(shared_data / "small-mri", images=".", masks=".", mask_suffix="_brain")[0]
    assert head.id == "head4mm-t1"  # LPS, (51, 64, 64) at 4 mm
    options = PreprocessOptions(target_spacing_mm=None, reorient_ras=True)
    (ras,) = preprocess_manifest([head], tmp_path / "cache", options, progress=False)
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S")
    assert nib.aff2axcodes(ras.original_affine) == ("L", "P", "S")
    assert ras.image.shape == (64, 51, 64)


def test_png_through_preprocessing(shared_data, tmp_path):
    record = index_images2d(shared_data / "cxr-demo")[0]
    (volume,) = preprocess_manifest([record], tmp_path / "cache", PRESETS["paper"], progress=False)
    assert volume.image.shape == (1, 512, 512) and volume.spacing_mm == (1.0, 1.0, 1.0)
    assert volume.image.min() == 0.0 and volume.image.max() == 1.0
    assert 0.05 < volume.mask.mean() < 0.6


@pytest.mark.parametrize("shape, factors", [((7, 9, 5), (2.0, 1.5, 0.5)), ((12, 10, 8), (1.0, 1.5789, 2.105)),
                                            ((20, 16, 1), (0.5, 0.5, 1.0)), ((5, 6, 4), (1.0, 1.0, 1.33))])
def test_zoom_cubic_equals_scipy(shape, factors):
    data = np.random.default_rng(0).normal(size=shape)
    expected = ndimage.zoom(data, factors, order=3)
    np.testing.assert_allclose(pp_resample.zoom_cubic(data, expected.shape), expected, rtol=0, atol=1e-10)


def test_fake_cc359_tree_with_real_names_and_spacings(shared_data, tmp_path):
    """Two scans per domain under their real names and recorded spacings, 8x8x8 voxels each."""
    import csv

    from fewshot_da.data.datasets import index_cc359

    with open(shared_data / "cc359-names.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    chosen = [r for d in ("siemens3", "philips15") for r in [row for row in rows if row["domain"] == d][:2]]
    spacing = {}
    for row in chosen:
        sp = [float(row[f"spacing_{i}"]) for i in range(3)]
        spacing[row["id"]] = sp
        image, mask = phantom_volume((8, 8, 8), domain=row["domain"])
        for data, rel in ((image, row["image"]), (mask, row["mask"])):
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data, np.diag(sp + [1.0])), str(tmp_path / rel))
    records = index_cc359(tmp_path)
    assert [(r.id, r.domain) for r in records] == [("CC0001", "philips15"), ("CC0002", "philips15"),
                                                  ("CC0180", "siemens3"), ("CC0181", "siemens3")]
    volumes = preprocess_manifest(records, tmp_path / "cache", PRESETS["dart20-code"], progress=False)
    for volume in volumes:
        sp = spacing[volume.id]
        # array shape round(8 * old / new) with new = (1, 0.95, 0.95); slice-major puts axis 2 first
        expected = [int(round(8 * s / t)) for s, t in zip(sp, (1.0, 0.95, 0.95))]
        assert volume.image.shape == (expected[2], expected[0], expected[1]), (volume.id, sp)
        assert volume.spacing_mm == (0.95, 1.0, 0.95)
    assert volumes[2].image.shape[1] == 11  # siemens3: 1.33 mm along axis 0 -> 8 * 1.33 = 10.6 -> 11 voxels


def _png_pair(folder, name, shape, box, spacing_mm=None):
    """A grey gradient PNG of `shape` (rows, cols) and a 0/255 mask that is 1 inside `box` (r0, r1, c0, c1)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    Image.fromarray(((rows + 2 * cols) % 251).astype(np.uint8)).save(folder / f"{name}.png")
    mask = np.zeros(shape, np.uint8)
    mask[box[0]:box[1], box[2]:box[3]] = 255
    Image.fromarray(mask).save(folder / f"{name}_mask.png")
    return Record(name, str(folder / f"{name}.png"), str(folder / f"{name}_mask.png"), "us", spacing_mm)


def test_png_pixel_spacing_comes_from_the_manifest(tmp_path):
    record = _png_pair(tmp_path / "png", "a", (40, 60), (10, 30, 20, 40), spacing_mm=(0.5, 0.5))
    (volume,) = preprocess_manifest([record], tmp_path / "cache", PreprocessOptions(target_spacing_mm=None),
                                    progress=False)
    assert volume.image.shape == (1, 40, 60) and volume.spacing_mm == (1.0, 0.5, 0.5)
    # the paper preset resamples 0.5 mm pixels to 1 mm; the one-slice axis is never resampled
    for options in (PRESETS["paper"], PreprocessOptions(target_spacing_mm=(1.0, 1.0, 2.0))):
        (volume,) = preprocess_manifest([record], tmp_path / "cache", options, progress=False)
        assert volume.image.shape == (1, 20, 30) and volume.spacing_mm[1:] == (1.0, 1.0)
        assert volume.mask.sum() == 10 * 10  # 20 x 20 pixels of 0.25 mm2 = 100 mm2 = 100 pixels of 1 mm2
    # the manifest's spacing is part of the cache key of a 2D image (the file identity alone is not)
    unitless = Record("a", record.image, record.mask, "us")
    assert pp_cache.cache_key(record, PRESETS["paper"]) != pp_cache.cache_key(unitless, PRESETS["paper"])


def test_resize_keeps_the_field_of_view_and_records_the_spacing(tmp_path):
    # 512 x 512 at 0.1 mm (BUS-BRA's size) -> 256 x 256 at 0.2 mm; a 2x-aligned box stays exact
    record = _png_pair(tmp_path / "png", "big", (512, 512), (100, 300, 50, 450), spacing_mm=(0.1, 0.1))
    options = PRESETS["paper"].replace(resize=256)
    (volume,) = preprocess_manifest([record], tmp_path / "cache", options, progress=False)
    assert volume.image.shape == (1, 256, 256) and volume.spacing_mm == (1.0, 0.2, 0.2)
    assert volume.to_slice_major(volume.to_array_order(volume.mask)).sum() == 100 * 200
    expected = np.zeros((256, 256), np.uint8)
    expected[50:150, 25:225] = 1
    assert np.array_equal(volume.mask[0], expected)
    # the corners of the field of view coincide: new pixel edge -0.5 maps onto old pixel edge -0.5
    original = np.diag([0.1, 0.1, 1.0, 1.0])
    for corner in ([-0.5, -0.5, 0, 1], [255.5, 255.5, 0, 1]):
        scaled = [(c + 0.5) * 2 - 0.5 if i < 2 else c for i, c in enumerate(corner[:3])] + [1]
        np.testing.assert_allclose(volume.affine @ corner, original @ scaled)
    assert volume.image.min() == 0.0 and volume.image.max() == 1.0
    # not square (BUSI is 256 wide, ~215 high): resized to 256 x 256 regardless, spacing per axis
    small = _png_pair(tmp_path / "png", "small", (215, 256), (20, 120, 30, 200))
    (volume,) = preprocess_manifest([small], tmp_path / "cache", options, progress=False)
    assert volume.image.shape == (1, 256, 256)
    np.testing.assert_allclose(volume.spacing_mm, (1.0, 215 / 256, 1.0))
    area_mm2 = volume.mask.sum() * volume.spacing_mm[1] * volume.spacing_mm[2]
    assert abs(area_mm2 - 100 * 170) < 0.02 * 100 * 170


def test_resize_of_3d_volumes_is_in_plane(anisotropic_scan, tmp_path):
    """(20, 16, 12) at (1, 1.5, 2) mm, slices along axis 2: the slice axis follows target_spacing_mm
    (12 x 2 mm -> 24 x 1 mm), the in-plane axes go to the asked size with the field of view kept."""
    options = PRESETS["paper"].replace(resize=(32, 24))
    (volume,) = preprocess_manifest([anisotropic_scan], tmp_path / "cache", options, progress=False)
    assert volume.image.shape == (24, 32, 24)
    np.testing.assert_allclose(volume.spacing_mm, (1.0, 20 / 32, 1.5 * 16 / 24))
    mask = nib.load(anisotropic_scan.mask).get_fdata() > 0
    volume_ml = volume.mask.sum() * np.prod(volume.spacing_mm)
    assert abs(volume_ml - mask.sum() * 3.0) < 0.05 * mask.sum() * 3.0


def test_resize_equals_scipy_grid_mode_zoom():
    data = np.random.default_rng(0).normal(size=(9, 7, 3))
    for size in ((4, 13), (9, 7), (18, 2)):
        out, index_map = pp_resample.resize_inplane(data, size, slice_axis=2)
        factors = (size[0] / 9, size[1] / 7, 1.0)
        expected = ndimage.zoom(data, factors, order=1, grid_mode=True, mode="nearest")
        np.testing.assert_allclose(out, expected, atol=1e-12)
        np.testing.assert_allclose(np.diag(index_map)[:3], (9 / size[0], 7 / size[1], 1.0))


def test_resize_option_parsing_and_cache_key(anisotropic_scan):
    assert PreprocessOptions(resize=256).resize == (256, 256)
    assert PreprocessOptions(resize="256,192").resize == (256, 192) == PreprocessOptions(resize=[256, 192]).resize
    assert pp.preprocess_options({"resize": [128, 128], "target_spacing_mm": None}).resize == (128, 128)
    assert pp.parse_resize("none") is None
    for bad in ("0", "256,256,3", "big", 2.5):
        with pytest.raises(pp.InputError, match="--resize"):
            PreprocessOptions(resize=bad)
    keys = {pp_cache.cache_key(anisotropic_scan, PRESETS["paper"].replace(resize=r)) for r in (None, 64, (64, 32))}
    assert len(keys) == 3


def test_cli_preprocess_resize(cli_runner, cli_app, tmp_path):
    import json

    from fewshot_da.data.manifest import write_manifest

    record = _png_pair(tmp_path / "png", "big", (64, 48), (8, 40, 8, 40), spacing_mm=(0.1, 0.1))
    write_manifest([record], tmp_path / "manifest.csv")
    result = cli_runner.invoke(cli_app, ["data", "preprocess", str(tmp_path / "manifest.csv"), "--cache",
                                         str(tmp_path / "cache"), "--resize", "32", "--workers", "1"])
    assert result.exit_code == 0, result.output
    (entry,) = (tmp_path / "cache").iterdir()
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["shape"] == [1, 32, 32] and meta["spacing_mm"] == pytest.approx([1.0, 0.2, 0.15], abs=1e-12)
    assert meta["options"]["resize"] == [32, 32]
    result = cli_runner.invoke(cli_app, ["data", "preprocess", str(tmp_path / "manifest.csv"), "--cache",
                                         str(tmp_path / "cache"), "--resize", "0"])
    assert result.exit_code != 0 and result.output.strip().splitlines() == [
        "Error: --resize '0': need one or two positive whole numbers of pixels (e.g. 256 or 256,192)"]
