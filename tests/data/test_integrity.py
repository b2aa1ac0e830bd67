"""Integrity: verified gzip reads, header geometry, cache checksums and rebuilds, leftovers, a full disk."""
import errno
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from fewshot_da import atomic
from fewshot_da.atomic import DiskFullError, atomic_path, write_text_atomic
from fewshot_da.data import preprocess as pp
from fewshot_da.data import cache as pp_cache
from fewshot_da.data import resample as pp_resample
from fewshot_da.data.datasets import index_folder
from fewshot_da.data.io import load_volume
from fewshot_da.data.manifest import Record
from fewshot_da.data.phantoms import phantom_volume
from fewshot_da.errors import InputError


def _scan(tmp_path, name="scan", shape=(20, 16, 12), spacing=(1.0, 1.0, 1.0)):
    image, mask = phantom_volume(shape, domain="ge15", seed=1)
    affine = np.diag([*spacing, 1.0])
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / f"{name}.nii.gz"))
    nib.save(nib.Nifti1Image(mask, affine), str(tmp_path / f"{name}_ss.nii.gz"))
    return Record(name, str(tmp_path / f"{name}.nii.gz"), str(tmp_path / f"{name}_ss.nii.gz"), "ge15")


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ------------------------------------------------------------------------------------------------ gzip
def test_no_single_byte_corruption_of_a_gzip_nifti_passes_silently(tmp_path):
    """60 seeded single-byte corruptions: each is refused naming the file, or reads the very same voxels
    (bytes the gzip CRC does not cover: the header's mtime, flags for the OS, ...). nibabel alone let about
    half of them through with changed voxels."""
    data = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(good))
    raw = good.read_bytes()
    rng = np.random.default_rng(1)
    refused = same = 0
    for trial in range(60):
        position = int(rng.integers(len(raw)))
        corrupted = bytearray(raw)
        corrupted[position] ^= int(rng.integers(1, 256))
        path = tmp_path / f"bad{trial}.nii.gz"
        path.write_bytes(bytes(corrupted))
        try:
            loaded = load_volume(path).data
        except InputError as exc:
            assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
            refused += 1
            continue
        assert np.array_equal(loaded, data), f"byte {position} changed the voxels silently"
        same += 1
    assert refused >= 50, (refused, same)


def test_crc_only_corruption_is_named_as_gzip(tmp_path):
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), str(path))
    raw = bytearray(path.read_bytes())
    raw[-8] ^= 1  # CRC-32 trailer: nibabel would not notice
    path.write_bytes(bytes(raw))
    nib.load(str(path)).get_fdata()  # the reason for the check
    with pytest.raises(InputError, match=r"scan\.nii\.gz: corrupt gzip stream \(CRC check failed"):
        load_volume(path)


def test_header_geometry_checks(tmp_path):
    image = nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4))
    raw = bytearray(image.to_bytes())
    raw[80:84] = np.float32(0).tobytes()  # pixdim[1] = 0, which nibabel turns into 1 mm
    path = tmp_path / "zero.nii.gz"
    path.write_bytes(gzip.compress(bytes(raw)))
    assert nib.load(str(path)).header.get_zooms()[0] == 1.0
    with pytest.raises(InputError, match=r"zero\.nii\.gz: voxel spacing \(pixdim\) 0 x 1 x 1 mm"):
        load_volume(path)
    # multi-member gzip (e.g. `cat a.gz b.gz`) is one valid stream
    multi = tmp_path / "multi.nii.gz"
    good = image.to_bytes()
    multi.write_bytes(gzip.compress(good[:1000]) + gzip.compress(good[1000:]))
    assert load_volume(multi).data.shape == (8, 8, 8)


def test_index_reports_a_zero_pixdim(tmp_path):
    from fewshot_da.data.checks import find_problems

    image = nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4))
    raw = bytearray(image.to_bytes())
    raw[84:88] = np.float32(0).tobytes()  # pixdim[2]
    (tmp_path / "a.nii.gz").write_bytes(gzip.compress(bytes(raw)))
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), np.eye(4)), str(tmp_path / "a_mask.nii.gz"))
    problems = find_problems([Record("a", str(tmp_path / "a.nii.gz"), str(tmp_path / "a_mask.nii.gz"), "d")],
                             min_scans_per_domain=1)
    expected = f"{tmp_path / 'a.nii.gz'}: voxel spacing (pixdim) 1 x 0 x 1 mm; every value must be finite and > 0"
    assert problems == [expected]


def test_disk_full_error_survives_a_worker_process():
    import pickle

    error = pickle.loads(pickle.dumps(DiskFullError(errno.ENOSPC, "No space left on device", "/c/image.npy")))
    assert isinstance(error, DiskFullError) and str(error) == "no space left on device writing /c/image.npy"


def test_target_grid_is_checked_before_resampling():
    assert pp_resample.check_target_grid((20, 16, 12), (1.0, 1.5, 2.0), (1.0, 1.0, 1.0), "x") == (20, 24, 24)
    with pytest.raises(InputError, match=r"^x\.nii: resampling .* limit 2\*\*28 voxels"):
        pp_resample.check_target_grid((256, 256, 150), (100.0, 100.0, 100.0), (1.0, 1.0, 1.0), "x.nii")
    with pytest.raises(InputError, match=r"^x\.nii: resampling .* leaves an empty axis"):
        pp_resample.check_target_grid((256, 256, 150), (1e-4, 1.0, 1.0), (1.0, 1.0, 1.0), "x.nii")


# ------------------------------------------------------------------------------------------------ cache
@pytest.fixture
def cached(tmp_path):
    record = _scan(tmp_path)
    (volume,) = pp_cache.preprocess_manifest([record], tmp_path / "cache", num_workers=1, progress=False)
    return record, volume, np.array(volume.image), np.array(volume.mask)


def _rebuild(record, tmp_path):
    messages = []
    (volume,) = pp_cache.preprocess_manifest([record], tmp_path / "cache", num_workers=1, progress=False,
                                       log=messages.append)
    return volume, messages


def test_entries_carry_checksums_and_open_verified(cached):
    _, volume, image, mask = cached
    meta = json.loads(Path(volume.path, "meta.json").read_text())
    assert set(meta["crc32"]) == {"image", "mask"} and meta["dtype"] == {"image": "float32", "mask": "uint8"}
    again = pp_cache.open_cached(volume.path)
    assert np.array_equal(again.image, image) and np.array_equal(again.mask, mask)


@pytest.mark.parametrize("damage, name, message", [
    ("truncate", "image.npy", r"image\.npy: unreadable cache array"),
    ("garble", "image.npy", r"image\.npy: CRC-32 mismatch"),
    ("garble", "mask.npy", r"mask\.npy: CRC-32 mismatch"),
    ("garbage", "meta.json", r"meta\.json: unreadable cache metadata"),
    ("drop-key", "meta.json", r"meta\.json: unreadable cache metadata \(no 'affine'\)"),
    ("remove", "meta.json", r"meta\.json: missing"),
    ("remove", "image.npy", r"image\.npy: missing"),
])
def test_corrupt_entries_are_named_and_rebuilt(cached, tmp_path, damage, name, message):
    record, volume, image, mask = cached
    folder = volume.path
    del volume
    target = os.path.join(folder, name)
    size = os.path.getsize(target)
    if damage == "truncate":
        os.truncate(target, size - 100)
    elif damage == "garble":
        with open(target, "r+b") as f:  # same size, different bytes past the .npy header
            f.seek(size - 64)
            f.write(bytes(range(1, 65)))
    elif damage == "garbage":
        Path(target).write_bytes(b"\xff{not json")
    elif damage == "drop-key":
        meta = json.loads(Path(target).read_text())
        del meta["affine"]
        Path(target).write_text(json.dumps(meta))
    else:
        os.remove(target)
    with pytest.raises(pp_cache.CorruptCacheError, match=message):
        pp_cache.open_cached(folder)
    volume, messages = _rebuild(record, tmp_path)
    assert len(messages) == 1 and messages[0].startswith(f"{target}: "), messages
    assert "rebuilding" in messages[0]
    assert volume.path == folder
    assert np.array_equal(volume.image, image) and np.array_equal(volume.mask, mask)
    assert [p for p in os.listdir(tmp_path / "cache") if p.startswith(".tmp-")] == []


def test_data_preprocess_cli_rebuilds_a_truncated_entry(cached, tmp_path, cli_runner, cli_app):
    from fewshot_da.data.manifest import write_manifest

    record, volume, image, _ = cached
    write_manifest([record], tmp_path / "manifest.csv")
    os.truncate(os.path.join(volume.path, "image.npy"), 1000)
    args = ["data", "preprocess", str(tmp_path / "manifest.csv"), "--cache", str(tmp_path / "cache"), "--workers", "1"]
    result = cli_runner.invoke(cli_app, args)
    assert result.exit_code == 0, result.output
    assert f"warning: {volume.path}/image.npy: unreadable cache array" in result.output
    assert np.array_equal(pp_cache.open_cached(volume.path).image, image)
    assert "warning" not in cli_runner.invoke(cli_app, args).output  # repaired: silent the next time


def test_entries_without_checksums_get_them(cached):
    volume = cached[1]
    meta_path = Path(volume.path, "meta.json")
    meta = json.loads(meta_path.read_text())
    crc = meta.pop("crc32")
    meta.pop("dtype")
    meta_path.write_text(json.dumps(meta))
    pp_cache.open_cached(volume.path)
    assert json.loads(meta_path.read_text())["crc32"] == crc


def test_stale_temporary_folders_are_removed(cached, tmp_path):
    record, volume, _, _ = cached
    cache = tmp_path / "cache"
    dead = cache / f".tmp-{os.path.basename(volume.path)}@{pp_cache._HOST}@{_dead_pid()}-0123abcd"
    alive = cache / f".tmp-{os.path.basename(volume.path)}@{pp_cache._HOST}@{os.getpid()}-0123abcd"
    old_format = cache / ".tmp-scan-0123456789abcdef-deadbeef"
    for folder in (dead, alive, old_format):
        folder.mkdir()
        (folder / "image.npy").write_bytes(b"half")
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(old_format, (day_ago, day_ago))
    _rebuild(record, tmp_path)
    assert not dead.exists() and not old_format.exists() and alive.exists()


def test_stale_atomic_temporaries_are_removed(tmp_path):
    target = tmp_path / "checkpoint.pt"
    dead = tmp_path / f"checkpoint.pt.tmp{_dead_pid()}"
    recent = tmp_path / "checkpoint.pt.tmp999999999"  # also dead, but written just now: kept
    alive = tmp_path / f"checkpoint.pt.tmp{os.getppid()}"
    for path in (dead, recent, alive):
        path.write_bytes(b"half")
    for path in (dead, alive):
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert not dead.exists() and recent.exists() and alive.exists()


# ------------------------------------------------------------------------------------------------ full disk
def test_atomic_path_names_the_file_on_enospc(tmp_path, monkeypatch):
    target = tmp_path / "run" / "metrics.csv"
    target.parent.mkdir()
    target.write_text("old")
    with pytest.raises(DiskFullError) as info, atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert str(info.value) == f"no space left on device writing {target}"
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert target.read_text() == "old" and os.listdir(target.parent) == ["metrics.csv"]


def test_torch_runtime_error_on_a_full_disk_is_named(tmp_path, monkeypatch):
    """torch.save reports ENOSPC as RuntimeError('... unexpected pos ...'): told apart by the free space."""
    class Full:
        f_bavail, f_frsize = 3, 4096

    target = tmp_path / "checkpoint.pt"
    with pytest.raises(RuntimeError, match="unrelated"), atomic_path(target):
        raise RuntimeError("unrelated")  # plenty of space: not a full disk
    monkeypatch.setattr(atomic.os, "statvfs", lambda path: Full())
    with pytest.raises(DiskFullError, match=f"^no space left on device writing {target}$"), atomic_path(target):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")


def test_cache_writer_names_the_file_on_enospc(tmp_path, monkeypatch):
    record = _scan(tmp_path)
    calls = []

    def full(path, *args, **kwargs):
        calls.append(path)
        if str(path).endswith("mask.npy"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return np.lib.format.write_array(open(path, "wb"), args[0])

    monkeypatch.setattr(pp.np, "save", full)
    with pytest.raises(DiskFullError, match=r"^no space left on device writing .*cache/scan-[0-9a-f]{16}/mask\.npy$"):
        pp_cache.preprocess_manifest([record], tmp_path / "cache", num_workers=1, progress=False)
    assert os.listdir(tmp_path / "cache") == []  # no half entry, no temporary folder


def test_cache_writer_names_the_folder_when_it_cannot_be_created(tmp_path, monkeypatch):
    record = _scan(tmp_path)
    real_mkdir = Path.mkdir

    def full(self, *args, **kwargs):
        if self.name.startswith(".tmp-"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", full)
    with pytest.raises(DiskFullError, match=r"^no space left on device writing .*/cache/scan-[0-9a-f]{16}$"):
        pp_cache.preprocess_manifest([record], tmp_path / "cache", num_workers=1, progress=False)


def _mount_tmpfs(folder, size):
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          check=False, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tiny tmpfs ({done.stderr.strip()}); needs root")


def test_real_full_disk_torch_save(tmp_path):
    folder = tmp_path / "full"
    _mount_tmpfs(folder, "128k")
    try:
        with pytest.raises(DiskFullError, match=f"writing {folder}/checkpoint.pt$"), \
                atomic_path(folder / "checkpoint.pt") as tmp:
            torch.save({"w": torch.zeros(100_000)}, tmp)
        assert os.listdir(folder) == []
        assert os.statvfs(folder).f_bfree * os.statvfs(folder).f_frsize >= 120 * 1024  # space released
    finally:
        assert subprocess.run(["umount", str(folder)], check=False).returncode == 0  # no file left open there


# ------------------------------------------------------------------------------------------------ indexing
def test_index_with_image_suffix(tmp_path):
    images, masks = tmp_path / "ds" / "images", tmp_path / "ds" / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    for case in ("a", "b"):
        _scan(images, f"{case}_t1")
        os.rename(images / f"{case}_t1_ss.nii.gz", masks / f"{case}_mask.nii.gz")
    with pytest.raises(InputError, match=r"a_t1\.nii\.gz: no mask in .*looked for a_t1\.\*, .*--image-suffix _t1"):
        index_folder(tmp_path / "ds")
    records = index_folder(tmp_path / "ds", image_suffix="_t1")
    assert [(r.id, os.path.basename(r.image), os.path.basename(r.mask)) for r in records] == [
        ("a", "a_t1.nii.gz", "a_mask.nii.gz"), ("b", "b_t1.nii.gz", "b_mask.nii.gz")]
    shared = tmp_path / "shared"  # images and masks in one folder
    shared.mkdir()
    for path in [*images.iterdir(), *masks.iterdir()]:
        os.link(path, shared / path.name)
    records = index_folder(tmp_path, images="shared", masks="shared", image_suffix="_t1", mask_suffix="_mask")
    assert [(r.id, os.path.basename(r.mask)) for r in records] == [("a", "a_mask.nii.gz"), ("b", "b_mask.nii.gz")]
