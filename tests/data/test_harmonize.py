"""Histogram matching (the SpotTUnet `hm` baseline): pooled reference, quantile landing, ties, files, cache."""
import json

import numpy as np
import pytest

from fewshot_da.data import preprocess as pp
from fewshot_da.data import cache as pp_cache
from fewshot_da.data.harmonize import (
    DEFAULT_PERCENTILES,
    fit_histogram_reference,
    histogram_digest,
    load_histogram_reference,
    match_histogram,
    save_histogram_reference,
)
from fewshot_da.errors import InputError


def _source_volumes(seed=0):
    rng = np.random.default_rng(seed)
    return [np.clip(rng.gamma(2.0 + i, 0.08, size=(48, 40, 6)), 0, 1) for i in range(3)]


def test_reference_is_the_pooled_quantile_function():
    volumes = _source_volumes()
    reference = fit_histogram_reference(volumes)
    pooled = np.concatenate([v.ravel() for v in volumes])
    assert reference.percentiles == DEFAULT_PERCENTILES and reference.n_volumes == 3 and reference.n_voxels == pooled.size
    # one bin (1.5e-5 here) plus the gap between neighbouring order statistics (~1e-4 for 35k voxels)
    np.testing.assert_allclose(reference.landmarks, np.percentile(pooled, DEFAULT_PERCENTILES), atol=3e-4)
    assert reference.landmarks[0] == pooled.min() and reference.landmarks[-1] == pooled.max()
    # CachedVolume-like objects (anything with .image) are read the same way
    class Cached:
        def __init__(self, image):
            self.image = image

    assert fit_histogram_reference([Cached(v) for v in volumes]) == reference


def test_matched_quantiles_land_on_the_reference():
    reference = fit_histogram_reference(_source_volumes())
    target = np.random.default_rng(1).beta(5, 2, size=(50, 44, 7)) ** 3  # another shape of histogram
    matched = match_histogram(target, reference)
    assert matched.shape == target.shape and matched.dtype == np.float64
    before = np.abs(np.percentile(target, reference.percentiles) - reference.landmarks).max()
    after = np.abs(np.percentile(matched, reference.percentiles) - reference.landmarks).max()
    assert before > 0.1 and after < 1e-3
    # monotone: the order of the voxels is kept
    order = np.argsort(target, axis=None)
    assert np.all(np.diff(matched.ravel()[order]) >= 0)
    assert reference.landmarks[0] <= matched.min() and matched.max() <= reference.landmarks[-1]


def test_matching_a_source_volume_onto_its_own_reference_is_near_identity():
    (volume,) = _source_volumes()[:1]
    matched = match_histogram(volume, fit_histogram_reference([volume]))
    assert np.abs(matched - volume).max() < 1e-3


def test_ties_go_to_the_mean_landmark_they_cover():
    """40% zeros cover percentiles 0..39 (40 landmarks): every zero maps to the mean of those 40 reference
    landmarks; a constant image maps to the mean of all landmarks."""
    reference = fit_histogram_reference(_source_volumes())
    rng = np.random.default_rng(2)
    image = np.concatenate([np.zeros(4000), rng.uniform(0.1, 1.0, 6000)])
    own = np.percentile(image, reference.percentiles)
    tied = own == 0.0
    matched = match_histogram(image, reference)
    assert np.allclose(matched[:4000], np.mean(np.asarray(reference.landmarks)[tied]))
    assert np.isfinite(matched).all()
    assert np.allclose(match_histogram(np.full((4, 4), 0.3), reference), np.mean(reference.landmarks))


def test_save_load_digest_and_bad_files(tmp_path):
    reference = fit_histogram_reference(_source_volumes())
    path = save_histogram_reference(reference, tmp_path / "ref.json", source="busi", ids=["a", "b"])
    assert load_histogram_reference(path) == reference
    assert json.loads(path.read_text())["ids"] == ["a", "b"]
    digest = histogram_digest(path)
    path.write_text(json.dumps(json.loads(path.read_text()), indent=4))  # formatting alone: same digest
    assert histogram_digest(path) == digest
    other = reference._replace(landmarks=tuple(v * 0.9 for v in reference.landmarks))
    assert histogram_digest(save_histogram_reference(other, tmp_path / "other.json")) != digest
    (tmp_path / "bad.json").write_text('{"percentiles": [0, 100], "landmarks": [1, 0]}')
    for name, match in [("missing.json", "histogram reference not found"), ("bad.json", "non-decreasing")]:
        with pytest.raises(InputError, match=f"{name}: .*{match}") as info:
            load_histogram_reference(tmp_path / name)
        assert "\n" not in str(info.value)
    (tmp_path / "junk.json").write_text("not json")
    with pytest.raises(InputError, match="junk.json: not a histogram reference"):
        load_histogram_reference(tmp_path / "junk.json")
    with pytest.raises(InputError, match="percentiles must increase from 0 to 100"):
        fit_histogram_reference(_source_volumes(), percentiles=(10, 50, 90))
    with pytest.raises(InputError, match="no source volumes"):
        fit_histogram_reference([])


def test_histogram_preprocessing_option_is_applied_and_cached(tmp_path):
    import nibabel as nib

    from fewshot_da.data.manifest import Record
    from fewshot_da.data.phantoms import phantom_volume

    image, mask = phantom_volume((24, 24, 12), domain="ge15", seed=3)
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(tmp_path / "t.nii.gz"))
    nib.save(nib.Nifti1Image(mask, np.eye(4)), str(tmp_path / "t_ss.nii.gz"))
    record = Record("t", str(tmp_path / "t.nii.gz"), str(tmp_path / "t_ss.nii.gz"), "ge15")
    reference = fit_histogram_reference(_source_volumes())
    path = save_histogram_reference(reference, tmp_path / "ref.json")
    options = pp.PreprocessOptions(target_spacing_mm=None, clip_percentiles=None, histogram=str(path))
    (volume,) = pp_cache.preprocess_manifest([record], tmp_path / "cache", options, progress=False)
    quantiles = np.percentile(np.asarray(volume.image, dtype=np.float64), reference.percentiles)
    # ties (the phantom's constant background) cannot be split; every untied landmark lands within 1e-3
    own = np.percentile(volume.to_array_order(volume.image), reference.percentiles)
    untied = np.r_[True, np.diff(own) > 1e-6] & np.r_[np.diff(own) > 1e-6, True]
    assert untied.sum() > 30
    assert np.abs(quantiles - reference.landmarks)[untied].max() < 1e-3
    # the key follows the reference's content, not its path
    key = pp_cache.cache_key(record, options)
    save_histogram_reference(reference._replace(landmarks=tuple(v * 0.5 for v in reference.landmarks)), path)
    assert pp_cache.cache_key(record, options) != key
    assert pp_cache.cache_key(record, options.replace(histogram=None)) != key
    with pytest.raises(InputError, match="--histogram .*nowhere.json: reference file not found"):
        pp.PreprocessOptions(histogram=str(tmp_path / "nowhere.json"))


def test_busi_to_bus_bra_matching_on_real_images(shared_data, tmp_path):
    """Real cross-site pair: a reference from 11 BUSI images (resized to 256) moves a BUS-BRA image's
    histogram onto BUSI's (the 8-bit images are full of ties, so closer, not equal)."""
    from fewshot_da.data.datasets import index_images2d

    options = pp.PRESETS["paper"].replace(resize=256)
    busi = [r for r in index_images2d(shared_data / "busi") if not r.id.startswith("normal")][::60]
    source = pp_cache.preprocess_manifest(busi, tmp_path / "cache", options, num_workers=1, progress=False)
    reference = fit_histogram_reference(source)
    path = save_histogram_reference(reference, tmp_path / "busi.json")
    target = index_images2d(shared_data / "bus-bra-mini")[:2]
    plain = pp_cache.preprocess_manifest(target, tmp_path / "cache", options, num_workers=1, progress=False)
    matched = pp_cache.preprocess_manifest(target, tmp_path / "cache", options.replace(histogram=str(path)),
                                     num_workers=1, progress=False)
    for a, b in zip(plain, matched):
        before = np.abs(np.percentile(np.asarray(a.image, float), reference.percentiles) - reference.landmarks).mean()
        after = np.abs(np.percentile(np.asarray(b.image, float), reference.percentiles) - reference.landmarks).mean()
        assert after < 0.25 * before, (a.id, before, after)
        assert b.image.shape == (1, 256, 256) and np.array_equal(a.mask, b.mask)
