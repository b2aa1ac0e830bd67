"""Loading NIfTI volumes and 2D images (as one-slice volumes) with one-line InputErrors."""
from __future__ import annotations

import gzip
import zlib
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_nifti_bytes(path: Path) -> bytes:
    """The file's NIfTI bytes; a gzip file is decompressed whole, so its CRC-32 and length are verified
    (nibabel stops reading before the trailer and would accept a corrupted stream)."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        if str(path).lower().endswith(".gz"):
            raise InputError(f"{path}: not a gzip file (the name ends in .gz)")
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise InputError(f"{path}: corrupt gzip stream ({_first_line(exc)})") from None


def _header_class(raw: bytes, path: Path):
    import nibabel as nib

    if len(raw) < 348:
        raise InputError(f"{path}: cannot read NIfTI (only {len(raw)} bytes; a header has 348)")
    for order in ("<", ">"):
        size = int(np.frombuffer(raw[:4], dtype=f"{order}i4")[0])
        if size == 348:
            return nib.Nifti1Image
        if size == 540:
            return nib.Nifti2Image
    raise InputError(f"{path}: cannot read NIfTI (not NIfTI-1/2: the header size field is not 348 or 540)")


def check_voxel_spacing(spacing_mm, path) -> tuple:
    """The spacing as floats; InputError naming `path` unless every value is finite and > 0 mm."""
    spacing = tuple(float(s) for s in spacing_mm)
    bad = [s for s in spacing if not (np.isfinite(s) and s > 0)]
    if bad:
        raise InputError(f"{path}: voxel spacing (pixdim) {' x '.join(f'{s:g}' for s in spacing)} mm; "
                         "every value must be finite and > 0")
    return spacing


def stored_pixdim_mm(path) -> tuple:
    """The voxel spacing as stored in a NIfTI header (before nibabel's fixes), reading only the header."""
    with open(path, "rb") as f:
        magic = f.read(2)
    with (gzip.open if magic == b"\x1f\x8b" else open)(path, "rb") as f:
        raw = f.read(540)
    klass = _header_class(raw, Path(path))
    stored = klass.header_class(binaryblock=raw[:klass.header_class.template_dtype.itemsize], check=False)
    ndim = int(stored["dim"][0])
    return tuple(float(v) for v in stored["pixdim"][1:1 + min(max(ndim, 0), 3)])


def _load_nifti(path: Path) -> Volume:
    raw = read_nifti_bytes(path)
    klass = _header_class(raw, path)
    try:
        # nibabel silently replaces pixdim 0 by 1 and negative by |pixdim|: check the stored values first.
        stored = klass.header_class(binaryblock=raw[:klass.header_class.template_dtype.itemsize], check=False)
        ndim = int(stored["dim"][0])
        pixdim = [float(v) for v in stored["pixdim"][1:1 + min(max(ndim, 0), 3)]]
    except Exception as exc:
        raise InputError(f"{path}: cannot read NIfTI ({_first_line(exc)})") from None
    check_voxel_spacing(pixdim, path)
    try:
        img = klass.from_bytes(raw)
        data = img.get_fdata(dtype=np.float64)  # applies the header's scale factor (IXI stores uint8 + slope)
    except Exception as exc:  # nibabel raises many types for corrupt/truncated files
        raise InputError(f"{path}: cannot read NIfTI ({_first_line(exc)})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3D volume, got shape {tuple(data.shape)}")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3]) + (1.0,) * max(0, 3 - len(img.header.get_zooms()))
    affine = np.asarray(img.affine, dtype=np.float64)
    axes = affine[:3, :3]
    norms = np.sqrt((axes**2).sum(0))
    if not np.isfinite(affine).all() or norms.min() == 0 or abs(np.linalg.det(axes / norms)) < 1e-6:
        raise InputError(f"{path}: the header's voxel-to-world affine is singular or not finite")
    return Volume(data, affine, check_voxel_spacing(zooms[:3], path))


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
