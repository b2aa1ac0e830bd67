"""Preprocessing (resample, clip, scale) cached on disk as slice-major .npy volumes opened by memory map.

The "paper" preset is what the seed papers state, done the way their code does it (REFERENCE.md §2):
`scipy.ndimage.zoom` by old/new spacing with cubic splines for image and mask (mask thresholded >= 0.5,
cval 0), then clip to the [1st, 99th] percentile of the whole volume, subtract the min and divide by the
max; no reorientation; slices along the last array axis. "dart20-code" is the code's exact setting
(target spacing (1, 0.95, 0.95) mm, float16 storage). The cubic zoom is computed separably
(`zoom_cubic`), equal to scipy's to ~1e-12 and 5-10x faster; both run in float64 as the reference
(nibabel get_fdata).

Two optional steps (off in both presets): `resize` brings every slice to one in-plane size (the ultrasound
protocol's 256 x 256, REFERENCE.md §7) and records the grown pixel spacing; `histogram` maps intensities
onto a source reference (`fewshot_da.data.harmonize`, the SpotTUnet `hm` baseline) after scaling.

Cache: one folder per (scan, options, file identity) under `cache_dir`, named `<id>-<key>`, holding
`image.npy` and `mask.npy` (S, H, W) and `meta.json`. The file identity is, by default, the absolute
path + size + modification time (`cache_key="stat"`: free to compute, and a rewritten file gets a new
entry); `cache_key="content"` hashes the bytes instead (survives moving the dataset, costs one read per
file per run). A folder is created under a temporary name and renamed when complete, so a crashed or
parallel run never leaves a half-written entry, and re-running skips what is done.

Integrity: meta.json keeps a CRC-32 of each array's bytes; `open_cached` checks shapes, dtypes and the CRC
once per open (about 9 ms for an IXI volume at 1 mm, 49 MiB: benchmarks/bench_reliability.py), and
`preprocess_manifest` rebuilds an entry that fails (truncated or garbled .npy, unreadable meta.json).
Temporary folders (`.tmp-<entry>@<host>@<pid>-<random>`) left by a killed run are removed by the next
one. Before resampling, the target grid is computed and refused above MAX_GRID_VOXELS.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import threading
import time
import uuid
import zlib
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from fewshot_da.atomic import DiskFullError, is_disk_full, write_text_atomic
from fewshot_da.data.checks import spacing_disagreement
from fewshot_da.data.io import is_image2d, load_mask, load_volume
from fewshot_da.data.manifest import Record
from fewshot_da.errors import InputError

CACHE_VERSION = 1
# Largest resampled grid accepted: 2**28 voxels (e.g. 645^3) is 2 GiB per float64 copy, and the cubic
# resampling holds about three copies (input coefficients, two passes), so ~6 GiB at peak.
MAX_GRID_VOXELS = 2**28


class CorruptCacheError(InputError):
    """A cache entry that fails its checks; str() names the file. `preprocess_manifest` rebuilds it."""


@dataclass(frozen=True)
class PreprocessOptions:
    """How a scan becomes a cached slice-major volume.

    target_spacing_mm: resampling target in array-axis order (after reorientation); None keeps the grid.
    clip_percentiles: intensity clip before min-max scaling to [0, 1]; None only min-max scales.
    reorient_ras: reorient image and mask to the closest canonical (RAS) orientation first (off in the
        reference code, which never checks orientation).
    slice_axis: the array axis slices are taken along (the reference: 2, the last one).
    dtype: "float32" or "float16" (the reference code caches float16).
    spline_order: resampling order for image and mask (reference: 3 for both; mask thresholded >= 0.5).
    cache_key: "stat" (path, size, mtime) or "content" (SHA-1 of the bytes); see the module docstring.
    resize: in-plane size (H, W) in pixels of every slice (one number: square), e.g. 256; None keeps the grid.
        Linear interpolation with half-pixel centres (the mask: linear, then >= 0.5); the aspect ratio is not
        kept, the field of view is, so spacing_mm grows by old/new size per axis. It replaces
        `target_spacing_mm` in-plane; that then resamples only the slice axis of 3D volumes.
    histogram: path of a histogram reference JSON (`harmonize.save_histogram_reference`); intensities are
        mapped onto it after scaling. The cache key includes the reference's content, not only its path.
    """

    target_spacing_mm: Optional[tuple] = (1.0, 1.0, 1.0)
    clip_percentiles: Optional[tuple] = (1.0, 99.0)
    reorient_ras: bool = False
    slice_axis: int = 2
    dtype: str = "float32"
    spline_order: int = 3
    cache_key: str = "stat"
    resize: tuple | None = None
    histogram: str | None = None

    def __post_init__(self):
        if self.dtype not in ("float32", "float16"):
            raise InputError(f"--dtype {self.dtype!r}: choose float32 or float16")
        if self.slice_axis not in (0, 1, 2):
            raise InputError(f"--slice-axis {self.slice_axis}: choose 0, 1 or 2")
        if self.target_spacing_mm is not None:
            spacing = tuple(float(s) for s in self.target_spacing_mm)
            if len(spacing) == 1:
                spacing = spacing * 3
            if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
                raise InputError(f"--spacing-mm {self.target_spacing_mm}: need 1 or 3 positive numbers")
            object.__setattr__(self, "target_spacing_mm", spacing)
        if self.cache_key not in ("stat", "content"):
            raise InputError(f"cache_key {self.cache_key!r}: choose stat or content")
        if self.resize is not None:
            object.__setattr__(self, "resize", parse_resize(self.resize))
        if self.histogram is not None:
            path = Path(self.histogram).expanduser()
            if not path.is_file():
                raise InputError(f"--histogram {self.histogram}: reference file not found")
            object.__setattr__(self, "histogram", str(path.resolve()))

    def replace(self, **changes) -> "PreprocessOptions":
        return dataclasses.replace(self, **changes)


def parse_resize(value) -> tuple | None:
    """`--resize`: 256, '256', '256,256', '256x192' or (256, 192) -> (H, W) pixels; 'none' -> None."""
    shown = value
    if isinstance(value, str):
        if value.strip().lower() == "none":
            return None
        value = value.lower().replace("x", " ").replace(",", " ").split()
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    try:
        size = tuple(int(v) for v in values)
        if any(float(v) != int(v) for v in values):
            raise ValueError
    except (TypeError, ValueError):
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise InputError(f"--resize {shown!r}: need one or two positive whole numbers of pixels (e.g. 256 or 256,192)")
    return size


PRESETS = {
    "paper": PreprocessOptions(),
    "dart20-code": PreprocessOptions(target_spacing_mm=(1.0, 0.95, 0.95), dtype="float16"),
}


def preprocess_options(spec, **changes) -> PreprocessOptions:
    """PreprocessOptions from a preset name, a dict of fields (as run.yaml stores it) or options themselves,
    with `changes` (None values ignored) applied on top."""
    changes = {k: v for k, v in changes.items() if v is not None}
    if isinstance(spec, PreprocessOptions):
        return spec.replace(**changes) if changes else spec
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise InputError(f"--preprocess {spec!r}: choose from {', '.join(PRESETS)}")
        return PRESETS[spec].replace(**changes) if changes else PRESETS[spec]
    fields = {**dict(spec), **changes}
    if fields.get("target_spacing_mm") is not None:
        fields["target_spacing_mm"] = tuple(fields["target_spacing_mm"])
    if fields.get("clip_percentiles") is not None:
        fields["clip_percentiles"] = tuple(fields["clip_percentiles"])
    return PreprocessOptions(**fields)


@dataclass(frozen=True)
class CachedVolume:
    """A preprocessed scan. `image` (S, H, W) float32/float16 and `mask` (S, H, W) uint8 0/1 are slice-major
    memory maps; `spacing_mm` is in the same (S, H, W) order. `affine` maps the preprocessed grid in its
    array-axis order (the file's order, or RAS order when reoriented; use `to_array_order`) to world mm; `original_affine`/`original_shape`
    describe the source file's grid.
    """

    id: str
    domain: str
    image: np.ndarray
    mask: np.ndarray
    spacing_mm: tuple
    affine: np.ndarray
    slice_axis: int
    original_affine: np.ndarray
    original_shape: tuple
    reoriented: bool
    path: str

    @property
    def n_slices(self) -> int:
        return int(self.image.shape[0])

    def to_array_order(self, x: np.ndarray) -> np.ndarray:
        """Slice-major (S, H, W) -> the preprocessed grid's array order (matches `affine`)."""
        return np.moveaxis(np.asarray(x), 0, self.slice_axis)

    def to_slice_major(self, x: np.ndarray) -> np.ndarray:
        return np.moveaxis(np.asarray(x), self.slice_axis, 0)


def _file_identity(path: str, mode: str) -> str:
    p = Path(path)
    if mode == "content":
        digest = hashlib.sha1()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    st = p.stat()
    return f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def cache_key(record: Record, options: PreprocessOptions) -> str:
    """16 hex digits identifying (record files, options); raises InputError for a missing file."""
    for path in filter(None, (record.image, record.mask)):
        if not Path(path).is_file():
            raise InputError(f"{path}: file not found (scan {record.id})")
    # resize/histogram are left out while unset, so entries cached before they existed keep their keys
    fields = {k: v for k, v in dataclasses.asdict(options).items() if v is not None or k not in ("resize", "histogram")}
    parts = [json.dumps(fields, sort_keys=True), str(CACHE_VERSION),
             _file_identity(record.image, options.cache_key),
             _file_identity(record.mask, options.cache_key) if record.mask else "no mask"]
    if record.spacing_mm is not None and is_image2d(record.image):
        parts.append(f"pixel spacing {record.spacing_mm}")  # the manifest sets a 2D image's geometry
    if options.histogram is not None:
        from fewshot_da.data.harmonize import histogram_digest

        parts.append(f"histogram {histogram_digest(options.histogram)}")
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]


def _safe_name(scan_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in scan_id)


def _cubic_zoom_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights that scipy's order-3 zoom applies along one axis to the spline coefficients:
    corner-aligned positions o * (n_in - 1) / (n_out - 1), cubic B-spline taps, mirror boundary."""
    if n_in == 1:
        return np.ones((n_out, 1))
    x = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 1.0)
    base = np.floor(x).astype(np.int64)
    t = x - base
    weights = ((1 - t) ** 3 / 6, (3 * t**3 - 6 * t**2 + 4) / 6, (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6, t**3 / 6)
    period = 2 * (n_in - 1)
    matrix = np.zeros((n_out, n_in))
    for k, w in enumerate(weights):
        j = np.mod(base - 1 + k, period)
        np.add.at(matrix, (np.arange(n_out), np.where(j > n_in - 1, period - j, j)), w)
    return matrix


def zoom_cubic(data: np.ndarray, out_shape) -> np.ndarray:
    """Equal to `scipy.ndimage.zoom(data, factors, order=3)` (mode 'constant', corner-aligned) up to
    rounding (~1e-12), in float64, but 5-10x faster: the spline is a tensor product, so after scipy's
    prefilter each axis is one dense matrix product (BLAS) instead of 64 taps per output voxel."""
    from scipy import ndimage

    coefficients = ndimage.spline_filter(np.asarray(data, dtype=np.float64), 3, output=np.float64, mode="mirror")
    for axis, (n_in, n_out) in enumerate(zip(data.shape, out_shape)):
        matrix = _cubic_zoom_matrix(n_in, int(n_out))
        coefficients = np.moveaxis(np.tensordot(matrix, coefficients, axes=([1], [axis])), 0, axis)
    return np.ascontiguousarray(coefficients)


def _zoom_factors(spacing_mm, target_spacing_mm) -> np.ndarray:
    factors = np.asarray(spacing_mm, dtype=float) / np.asarray(target_spacing_mm, dtype=float)
    return np.where(np.isfinite(factors), factors, 1.0)


def target_grid_shape(shape, spacing_mm, target_spacing_mm) -> tuple:
    """Voxels per axis after resampling `shape` from `spacing_mm` to `target_spacing_mm` (as `resample`)."""
    return tuple(int(round(s * f)) for s, f in zip(shape, _zoom_factors(spacing_mm, target_spacing_mm)))


def check_target_grid(shape, spacing_mm, target_spacing_mm, path) -> tuple:
    """The resampled grid shape; InputError naming `path` when an axis is empty or it exceeds
    MAX_GRID_VOXELS (a wrong pixdim, e.g. 100 mm voxels, would otherwise ask for hundreds of GiB)."""
    out = target_grid_shape(shape, spacing_mm, target_spacing_mm)
    where = (f"{path}: resampling {tuple(int(s) for s in shape)} voxels of "
             f"{' x '.join(f'{float(s):g}' for s in spacing_mm)} mm to "
             f"{' x '.join(f'{float(s):g}' for s in target_spacing_mm)} mm")
    if min(out) < 1:
        raise InputError(f"{where} leaves an empty axis {out}; check the header's voxel spacing (pixdim)")
    voxels = int(np.prod(np.array(out, dtype=np.float64)))
    if voxels > MAX_GRID_VOXELS:
        raise InputError(f"{where} asks for a {out} grid ({voxels:.3g} voxels, {voxels * 8 / 2**30:.0f} GiB per "
                         f"float64 copy; limit 2**28 voxels); check the header's voxel spacing (pixdim)")
    return out


def resample(data: np.ndarray, spacing_mm, target_spacing_mm, order: int) -> tuple[np.ndarray, np.ndarray]:
    """scipy zoom by old/new spacing (NaN factors -> 1, as the reference), in float64. Returns (array, scale)
    where scale[i] = input voxels per output voxel along axis i (zoom maps the corner voxels onto each
    other). Order 3 uses `zoom_cubic` (same numbers as scipy's, faster)."""
    from scipy import ndimage

    factors = _zoom_factors(spacing_mm, target_spacing_mm)
    if np.allclose(factors, 1.0):
        return data, np.ones(3)
    out_shape = target_grid_shape(data.shape, spacing_mm, target_spacing_mm)
    if min(out_shape) < 1:
        raise InputError(f"resampling {data.shape} voxels to {target_spacing_mm} mm leaves an empty axis {out_shape}")
    if order == 3:
        out = zoom_cubic(data, out_shape)
    else:
        out = ndimage.zoom(np.asarray(data, dtype=np.float64), factors, order=order, cval=0.0)
    in_shape, out_size = np.array(data.shape, float), np.array(out.shape, float)
    scale = np.where(out_size > 1, (in_shape - 1) / np.maximum(out_size - 1, 1), in_shape / out_size)
    return out, scale


def _linear_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of linear interpolation with half-pixel centres: output pixel o samples input
    position (o + 0.5) n_in / n_out - 0.5, clamped to the edge pixels (as cv2.resize / PIL bilinear, no
    anti-aliasing; scipy `zoom(order=1, grid_mode=True, mode="nearest")`)."""
    x = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1.0)
    base = np.minimum(np.floor(x).astype(np.int64), max(n_in - 2, 0))
    t = x - base
    matrix = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(matrix, (rows, base), 1.0 - t)
    if n_in > 1:
        np.add.at(matrix, (rows, base + 1), t)
    return matrix


def resize_inplane(data: np.ndarray, size, slice_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize the two axes other than `slice_axis` to `size` = (H, W) pixels, in float64, by linear
    interpolation with half-pixel centres (the field of view is kept). Returns (array, index_map) where the
    4x4 `index_map` takes output voxel indices to input ones (compose: affine_out = affine_in @ index_map;
    its diagonal is the spacing factor n_in / n_out)."""
    out = np.asarray(data, dtype=np.float64)
    index_map = np.eye(4)
    inplane = [a for a in range(3) if a != slice_axis]
    for axis, n_out in zip(inplane, size):
        n_in = out.shape[axis]
        if n_in == n_out:
            continue
        out = np.moveaxis(np.tensordot(_linear_resize_matrix(n_in, int(n_out)), out, axes=([1], [axis])), 0, axis)
        index_map[axis, axis] = n_in / n_out
        index_map[axis, 3] = 0.5 * n_in / n_out - 0.5
    return np.ascontiguousarray(out), index_map


def scale_intensities(image: np.ndarray, clip_percentiles) -> np.ndarray:
    """Clip to the given percentiles of the whole volume, then min-max to [0, 1] (constant -> all 0)."""
    if clip_percentiles is not None:
        low, high = np.percentile(image, clip_percentiles)
        image = np.clip(image, low, high)
    image = image - image.min()
    peak = image.max()
    return image / peak if peak > 0 else image


def _load_pair(record: Record):
    image = load_volume(record.image, spacing_mm=record.spacing_mm)
    if not record.mask:  # images only (label-free uses: shift map): an empty mask, no file read
        return image, image._replace(data=np.zeros(image.data.shape, dtype=np.uint8))
    mask = load_mask(record.mask, spacing_mm=record.spacing_mm)
    if image.data.shape != mask.data.shape:
        raise InputError(f"{record.mask}: mask shape {mask.data.shape} differs from image shape "
                         f"{image.data.shape} ({record.image})")
    if not np.allclose(image.affine, mask.affine, atol=1e-3, rtol=1e-4):
        raise InputError(f"{record.mask}: mask affine differs from the image's ({record.image})")
    return image, mask


def preprocess_record(record: Record, options: PreprocessOptions):
    """Load, check and preprocess one scan. Returns (image, mask, meta) with image/mask in array order."""
    import nibabel as nib

    image, mask = _load_pair(record)
    data, mask_data, affine, spacing = image.data, mask.data, image.affine, image.spacing_mm
    original_affine, original_shape = image.affine, data.shape
    if options.reorient_ras:
        ornt = nib.orientations.io_orientation(affine)
        data = nib.orientations.apply_orientation(data, ornt)
        mask_data = nib.orientations.apply_orientation(mask_data, ornt)
        affine = affine @ nib.orientations.inv_ornt_aff(ornt, original_shape)
        spacing = tuple(float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(0)))
    if options.target_spacing_mm is not None:
        # A one-slice axis (a 2D image) is never resampled; with `resize`, the in-plane axes are left to it.
        target = tuple(float(s) if n == 1 or (options.resize is not None and i != options.slice_axis) else float(t)
                       for i, (n, s, t) in enumerate(zip(data.shape, spacing, options.target_spacing_mm)))
        check_target_grid(data.shape, spacing, target, record.image)
        data, scale = resample(data, spacing, target, options.spline_order)
        mask_float, _ = resample(mask_data.astype(np.float64), spacing, target, options.spline_order)
        mask_data = (mask_float >= 0.5).astype(np.uint8)
        affine = affine @ np.diag([*scale, 1.0])
        # The grid the reference reports (and scores sDSC on) is the target spacing itself.
        spacing = target
    if options.resize is not None:
        data, index_map = resize_inplane(data, options.resize, options.slice_axis)
        mask_float, _ = resize_inplane(mask_data, options.resize, options.slice_axis)
        mask_data = (mask_float >= 0.5).astype(np.uint8)
        affine = affine @ index_map
        spacing = tuple(float(s) * index_map[i, i] for i, s in enumerate(spacing))
    data = scale_intensities(data, options.clip_percentiles)
    if options.histogram is not None:
        from fewshot_da.data.harmonize import load_histogram_reference, match_histogram

        data = match_histogram(data, load_histogram_reference(options.histogram))
    data = data.astype(options.dtype)
    axis = options.slice_axis
    meta = {
        "id": record.id, "domain": record.domain, "image": str(record.image), "mask": str(record.mask),
        "slice_axis": axis,
        "spacing_mm": [float(spacing[axis])] + [float(s) for i, s in enumerate(spacing) if i != axis],
        "shape": [int(data.shape[axis])] + [int(s) for i, s in enumerate(data.shape) if i != axis],
        "affine": np.asarray(affine).tolist(), "original_affine": np.asarray(original_affine).tolist(),
        "original_shape": [int(s) for s in original_shape], "reoriented": bool(options.reorient_ras),
        "options": dataclasses.asdict(options), "version": CACHE_VERSION,
    }
    return data, mask_data, meta


def _entry_dir(cache_dir: Path, record: Record, options: PreprocessOptions) -> Path:
    return cache_dir / f"{_safe_name(record.id)}-{cache_key(record, options)}"


_HOST = socket.gethostname().replace("@", "_")
_TMP_NAME = re.compile(r"^\.tmp-.*@(?P<host>[^@]*)@(?P<pid>\d+)-[0-9a-f]{8}$")
# Temporary folders in another format, or from another host, are removed once this old (seconds).
_FOREIGN_TMP_AGE_S = 24 * 3600


def _tmp_dir(cache_dir: Path, name: str) -> Path:
    """A temporary folder name carrying host and pid, so the next run can tell a dead writer's leftovers."""
    return cache_dir / f".tmp-{name}@{_HOST}@{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temporaries(cache_dir) -> list[Path]:
    """Remove `.tmp-*` folders of killed writers (same host and a dead pid; others after 24 h); returns them."""
    removed = []
    for path in Path(cache_dir).glob(".tmp-*"):
        match = _TMP_NAME.match(path.name)
        if match and match["host"] == _HOST:
            stale = not _pid_alive(int(match["pid"]))
        else:
            try:
                stale = time.time() - path.stat().st_mtime > _FOREIGN_TMP_AGE_S
            except FileNotFoundError:
                continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _crc32(array: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"))


def _write_file(path: Path, write, shown: Path) -> None:
    """Run write(path); a full disk becomes DiskFullError naming `shown` (the file's place in the entry)."""
    try:
        write(path)
    except Exception as exc:
        if is_disk_full(exc, path):
            raise DiskFullError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(shown)) from None
        raise


def _write_entry(record: Record, options: PreprocessOptions, cache_dir: str) -> str:
    """Preprocess one record into its cache folder unless it is there already; returns the folder."""
    cache_dir = Path(cache_dir)
    final = _entry_dir(cache_dir, record, options)
    if (final / "meta.json").is_file():
        return str(final)
    image, mask, meta = preprocess_record(record, options)
    axis = options.slice_axis
    image = np.ascontiguousarray(np.moveaxis(image, axis, 0))
    mask = np.ascontiguousarray(np.moveaxis(mask, axis, 0))
    meta["dtype"] = {"image": str(image.dtype), "mask": str(mask.dtype)}
    meta["crc32"] = {"image": _crc32(image), "mask": _crc32(mask)}
    tmp = _tmp_dir(cache_dir, final.name)
    try:
        _write_file(tmp, lambda p: p.mkdir(parents=True), final)
        _write_file(tmp / "image.npy", lambda p: np.save(p, image), final / "image.npy")
        _write_file(tmp / "mask.npy", lambda p: np.save(p, mask), final / "mask.npy")
        _write_file(tmp / "meta.json", lambda p: p.write_text(json.dumps(meta, indent=1)), final / "meta.json")
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished the same entry first
            if not (final / "meta.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(final)


def _read_meta(folder: Path) -> dict:
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise CorruptCacheError(f"{meta_path}: missing; not a complete preprocessed cache entry")
    try:
        meta = json.loads(meta_path.read_text())
        for key in ("id", "domain", "spacing_mm", "shape", "affine", "slice_axis", "original_affine",
                    "original_shape", "reoriented"):
            meta[key]
    except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = f"no {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
        raise CorruptCacheError(f"{meta_path}: unreadable cache metadata ({reason})") from None
    return meta


# np.load parses each .npy header with ast.literal_eval, and CPython 3.11 can raise a spurious "SystemError: AST
# constructor recursion depth mismatch" when threads parse at the same time (the AST state's depth counter is
# shared; CPython gh-106905). The threaded cache opening of `preprocess_manifest` hit it once in a 135-run grid
# on 3.11.7, so headers are parsed one at a time.
_NPY_HEADER_LOCK = threading.Lock()


def _load_array(path: Path, mode, shape, dtype, crc):
    try:
        with _NPY_HEADER_LOCK:  # mmap mode: only the header is read here; the CRC pass below runs in parallel
            array = np.load(path, mmap_mode=mode, allow_pickle=False)
    except FileNotFoundError:
        raise CorruptCacheError(f"{path}: missing from its cache entry") from None
    except (ValueError, OSError, EOFError) as exc:  # truncated data or header
        raise CorruptCacheError(f"{path}: unreadable cache array ({str(exc).splitlines()[0]})") from None
    if tuple(array.shape) != tuple(shape) or (dtype is not None and str(array.dtype) != dtype):
        raise CorruptCacheError(f"{path}: holds {array.dtype} {tuple(array.shape)}, meta.json says "
                                f"{dtype or 'an array of'} {tuple(shape)}")
    if crc is not None and _crc32(array) != crc:
        raise CorruptCacheError(f"{path}: CRC-32 mismatch (the file changed after it was written)")
    return array


def open_cached(folder, *, mmap: bool = True, verify: bool = True) -> CachedVolume:
    """Open a cache folder written by `preprocess_manifest` (memory-mapped, read-only).

    verify: check shapes, dtypes and the CRC-32 of both arrays (reads them once, ~0.2 ms per MiB).
    Raises CorruptCacheError naming the file when a check fails.
    """
    folder = Path(folder)
    meta = _read_meta(folder)
    mode = "r" if mmap else None
    shape = tuple(meta["shape"])
    dtypes, crcs = meta.get("dtype", {}), (meta.get("crc32", {}) if verify else {})
    image = _load_array(folder / "image.npy", mode, shape, dtypes.get("image"), crcs.get("image"))
    mask = _load_array(folder / "mask.npy", mode, shape, dtypes.get("mask", "uint8"), crcs.get("mask"))
    try:
        volume = CachedVolume(
            id=meta["id"], domain=meta["domain"], image=image, mask=mask,
            spacing_mm=tuple(meta["spacing_mm"]), affine=np.array(meta["affine"], dtype=np.float64),
            slice_axis=int(meta["slice_axis"]), original_affine=np.array(meta["original_affine"], dtype=np.float64),
            original_shape=tuple(meta["original_shape"]), reoriented=bool(meta["reoriented"]), path=str(folder),
        )
    except (ValueError, TypeError) as exc:
        raise CorruptCacheError(f"{folder / 'meta.json'}: unreadable cache metadata ({exc})") from None
    if verify and "crc32" not in meta:  # an entry from before checksums: add them now
        meta["dtype"] = {"image": str(image.dtype), "mask": str(mask.dtype)}
        meta["crc32"] = {"image": _crc32(image), "mask": _crc32(mask)}
        try:
            write_text_atomic(folder / "meta.json", json.dumps(meta, indent=1))
        except OSError:
            pass  # a read-only cache stays usable, unverified
    return volume


def _remove_entry(folder: Path) -> None:
    """Move an entry aside under a temporary name (atomic), then delete it."""
    doomed = _tmp_dir(folder.parent, folder.name)
    try:
        os.rename(folder, doomed)
    except FileNotFoundError:  # another process removed it first
        return
    shutil.rmtree(doomed, ignore_errors=True)


def _open_or_error(folder: Path):
    """(open_cached(folder), None), or (None, the CorruptCacheError)."""
    try:
        return open_cached(folder), None
    except CorruptCacheError as exc:
        return None, exc


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def preprocess_manifest(records: Sequence[Record], cache_dir, options: PreprocessOptions = PRESETS["paper"], *,
                        num_workers: int = 2, progress: bool = True, log=_warn) -> list[CachedVolume]:
    """Preprocess every record into `cache_dir` (skipping cached ones) and return them opened, in order.

    Parallel over files with `num_workers` processes (<= 1: in this process). Workers are spawned (safe
    next to torch/loader threads), so a script calling this with workers needs the usual
    `if __name__ == "__main__":` guard. Bad input raises InputError naming the file (shape/affine
    mismatch, non-binary mask, NaN, 4D, unreadable); entries finished before the error stay cached.
    Cached entries are verified when opened; a corrupt one is reported through `log` and rebuilt.
    A full disk raises DiskFullError naming the file being written.
    """
    from tqdm.auto import tqdm

    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{cache_dir}: cannot create the cache folder ({exc.strerror or exc})") from None
    clean_stale_temporaries(cache_dir)
    records = list(records)
    for record in records:  # before any work: a manifest spacing the NIfTI header contradicts is refused
        disagreement = spacing_disagreement(record)
        if disagreement:
            raise InputError(disagreement)
    _ensure_open_file_limit(2 * len(records) + 256)
    opened: dict[int, CachedVolume] = {}
    entries = {i: _entry_dir(cache_dir, r, options) for i, r in enumerate(records)}
    existing = [i for i, entry in entries.items() if entry.is_dir()]
    # Verifying reads every byte once (CRC-32 releases the GIL): threads spread it over the cores.
    with ThreadPoolExecutor(max_workers=max(1, min(len(existing), os.cpu_count() or 1, 8))) as pool:
        checked = list(pool.map(_open_or_error, [entries[i] for i in existing]))
    for i, (volume, error) in zip(existing, checked):
        if error is None:
            opened[i] = volume
        else:
            log(f"{error}; rebuilding the cache entry")
            _remove_entry(entries[i])
    todo = [i for i in range(len(records)) if i not in opened]
    bar = tqdm(total=len(records), initial=len(records) - len(todo), desc="preprocess", unit="scan",
               disable=not progress)
    try:
        if num_workers <= 1 or len(todo) <= 1:
            for i in todo:
                _write_entry(records[i], options, str(cache_dir))
                bar.update(1)
        else:
            import multiprocessing

            # spawn: safe when the caller already runs threads (torch, the slice loader).
            context = multiprocessing.get_context("spawn")
            from ..lifetime import end_with_parent  # workers must not outlive a killed parent

            with ProcessPoolExecutor(max_workers=min(num_workers, len(todo)), mp_context=context,
                                     initializer=end_with_parent, initargs=(os.getpid(),)) as pool:
                futures = [pool.submit(_write_entry, records[i], options, str(cache_dir)) for i in todo]
                for future in futures:
                    future.result()
                    bar.update(1)
    finally:
        bar.close()
    for i in todo:
        opened[i] = open_cached(_entry_dir(cache_dir, records[i], options))
    return [opened[i] for i in range(len(records))]


def _ensure_open_file_limit(needed: int) -> None:
    """Each memory map keeps a file descriptor: raise the soft limit (often 1024) toward the hard one."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


def save_prediction_nifti(volume: CachedVolume, prediction: np.ndarray, path, *,
                          original_grid: bool = False, order: int = 0) -> Path:
    """Write a slice-major (S, H, W) prediction as NIfTI.

    original_grid=False: in the preprocessed grid with `volume.affine`. True: resampled back onto the
    source file's grid (nearest neighbour for order 0; linear + threshold 0.5 for order 1), with the
    original affine, so it overlays the input scan.
    """
    import nibabel as nib
    from scipy import ndimage

    prediction = np.asarray(prediction)
    if prediction.shape != volume.image.shape:
        raise InputError(f"{path}: prediction shape {prediction.shape} differs from the volume's {volume.image.shape}")
    data = volume.to_array_order(prediction)
    affine = volume.affine
    if original_grid:
        # original voxel -> world -> preprocessed voxel
        mapping = np.linalg.inv(volume.affine) @ volume.original_affine
        resampled = ndimage.affine_transform(data.astype(np.float32), mapping[:3, :3], offset=mapping[:3, 3],
                                             output_shape=volume.original_shape, order=order, cval=0.0)
        data = resampled.astype(prediction.dtype) if order == 0 else (resampled >= 0.5).astype(np.uint8)
        affine = volume.original_affine
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), str(path))
    return path
