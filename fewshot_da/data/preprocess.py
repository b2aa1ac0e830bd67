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

This module holds the options and the per-scan transform (and writing predictions back as NIfTI); `resample` the
grids and the zooms; `cache` the cache folders and `preprocess_manifest`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from fewshot_da.data.io import load_mask, load_volume
from fewshot_da.data.manifest import Record
from fewshot_da.data.resample import check_target_grid, resample, resize_inplane
from fewshot_da.errors import InputError


CACHE_VERSION = 1  # of the cache entries (meta.json and the cache key): bump when preprocessing changes


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


def save_prediction_nifti(volume, prediction: np.ndarray, path, *,
                          original_grid: bool = False, order: int = 0) -> Path:
    """Write a slice-major (S, H, W) prediction of `volume` (a `cache.CachedVolume`) as NIfTI.

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
