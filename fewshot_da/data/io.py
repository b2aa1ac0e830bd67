"""Loading NIfTI volumes and 2D images (as one-slice volumes) with one-line InputErrors."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from fewshot_da.errors import InputError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
IMAGE2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class Volume(NamedTuple):
    """A 3D array in file order with its 4x4 voxel-to-world affine and spacing_mm in the same axis order.

    2D images are volumes of shape (H, W, 1), so slicing along the last axis gives the image back; their
    spacing_mm is (row, column, 1) from the manifest's `spacing` column (1 mm pixels when it is empty) and
    their affine is diag(spacing_mm).
    """

    data: np.ndarray
    affine: np.ndarray
    spacing_mm: tuple


def is_nifti(path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def is_image2d(path) -> bool:
    return str(path).lower().endswith(IMAGE2D_SUFFIXES)


def strip_suffix(name: str) -> str:
    """File name without its image suffix (`.nii.gz`, `.nii`, `.png`, ...)."""
    lower = name.lower()
    for suffix in NIFTI_SUFFIXES + IMAGE2D_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _load_nifti(path: Path) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = img.get_fdata(dtype=np.float64)  # applies the header's scale factor (IXI stores uint8 + slope)
    except Exception as exc:  # nibabel raises many types for corrupt/truncated files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: cannot read NIfTI ({reason})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3D volume, got shape {tuple(data.shape)}")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return Volume(data, np.asarray(img.affine, dtype=np.float64), zooms)


def pixel_spacing_mm(spacing_mm, path) -> tuple:
    """(row, column, slice) mm of a 2D image from the manifest's spacing: None -> (1, 1, 1); one number ->
    square pixels; two -> (row, column); three -> as given. The slice thickness defaults to 1 mm."""
    if spacing_mm is None:
        return (1.0, 1.0, 1.0)
    values = tuple(float(s) for s in spacing_mm)
    if not 1 <= len(values) <= 3 or not all(np.isfinite(values)) or min(values) <= 0:
        raise InputError(f"{path}: pixel spacing {' '.join(f'{v:g}' for v in values) or '(empty)'} mm must be "
                         "1-3 positive numbers (row, column[, slice])")
    if len(values) == 1:
        values = values * 2
    return values + (1.0,) if len(values) == 2 else values


def _load_image2d(path: Path, spacing_mm=None) -> Volume:
    from PIL import Image, UnidentifiedImageError

    spacing = pixel_spacing_mm(spacing_mm, path)
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "I", "I;16", "F", "1"):
                img = img.convert("L")
            data = np.asarray(img, dtype=np.float64)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    return Volume(data[:, :, None], np.diag([*spacing, 1.0]), spacing)


def load_volume(path, *, check_finite: bool = True, spacing_mm=None) -> Volume:
    """Load a NIfTI (.nii/.nii.gz) or 2D image (PNG/JPEG/...) as a float64 3D Volume.

    `spacing_mm` (the manifest's `spacing`) sets a 2D image's pixel size (see `pixel_spacing_mm`); a NIfTI
    file's own header counts and `spacing_mm` is ignored for it.

    Raises InputError (one line naming the file) when it is missing, unreadable, not 3D, or has NaN/inf.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if is_nifti(path):
        volume = _load_nifti(path)
    elif is_image2d(path):
        volume = _load_image2d(path, spacing_mm)
    else:
        raise InputError(f"{path}: unknown image format (expected .nii, .nii.gz, .png, .jpg)")
    if check_finite and not np.isfinite(volume.data).all():
        n_bad = int((~np.isfinite(volume.data)).sum())
        raise InputError(f"{path}: {n_bad} NaN/inf intensities")
    return volume


def load_mask(path, *, spacing_mm=None) -> Volume:
    """Load a binary mask as uint8 0/1. Accepts {0,1}, and {0,255} for 8-bit 2D images.

    Raises InputError naming the file when it holds other values (label maps must be binarised first;
    JPEG masks are rarely binary after compression, so keep masks as PNG). `spacing_mm` as in load_volume.
    """
    volume = load_volume(path, spacing_mm=spacing_mm)
    values = np.unique(volume.data)
    if is_image2d(path) and set(values.tolist()) <= {0.0, 255.0}:
        values = values / 255.0
        data = volume.data > 0
    else:
        data = volume.data > 0.5
    if not set(values.tolist()) <= {0.0, 1.0}:
        shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if len(values) > 6 else "")
        raise InputError(f"{path}: mask is not binary (values {shown}); expected 0/1")
    return Volume(data.astype(np.uint8), volume.affine, volume.spacing_mm)
