"""Reading mask files for scoring: NIfTI (whole gzip stream decoded and CRC-checked, isal when installed) and
2D images through the data layer, then binarised by one explicit rule with one-line errors naming the file."""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fewshot_da.data.io import is_image2d, is_nifti, load_volume
from fewshot_da.errors import InputError

try:  # Intel ISA-L's gzip: same stream, decoded 2-3x faster than zlib (optional extra `fast-io`)
    from isal import igzip as _gzip
except ImportError:  # pragma: no cover - depends on the environment
    _gzip = gzip


class MaskFile(NamedTuple):
    """Raw voxel values of a 2D or 3D mask file with spacing_mm (per array axis) and 4x4 affine."""

    data: np.ndarray
    spacing_mm: tuple
    affine: np.ndarray


def _read_nifti(path: Path) -> MaskFile:
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError

    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = _gzip.decompress(raw)  # reads to the end: the CRC and length of every member are checked
        # sizeof_hdr: 348 for NIfTI-1, 540 for NIfTI-2 (either byte order)
        nifti2 = raw[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c")
        image = (nib.Nifti2Image if nifti2 else nib.Nifti1Image).from_bytes(raw)
        data = np.asanyarray(image.dataobj)
    except (OSError, EOFError, zlib.error, ValueError, TypeError, ImageFileError, HeaderDataError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: cannot read NIfTI ({reason})") from None
    if data.ndim not in (2, 3):
        raise InputError(f"{path}: expected a 2D or 3D mask, got shape {data.shape}")
    spacing = tuple(float(z) for z in image.header.get_zooms()[: data.ndim])
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"{path}: header voxel spacing {spacing} is not positive")
    return MaskFile(data, spacing, np.asarray(image.affine, dtype=float))


def read_mask_file(path: str | os.PathLike) -> MaskFile:
    """Raw values of a NIfTI (.nii/.nii.gz, 2D or 3D) or 2D image (PNG, ...: 1 mm pixels, identity affine)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if is_nifti(path):
        return _read_nifti(path)
    if is_image2d(path):
        volume = load_volume(path)
        return MaskFile(volume.data[:, :, 0], (1.0, 1.0), volume.affine)
    raise InputError(f"{path}: unknown mask format (expected .nii, .nii.gz or a 2D image such as .png)")


def binarize(data: np.ndarray, path, *, label: int | None = None, threshold: float | None = None,
             ground_truth: bool = False) -> np.ndarray:
    """Foreground of a mask file's values: == `label`, or > `threshold`, or else nonzero-and-positive.

    Without `label` / `threshold` the values must be integers (binary or a label map, whose labels > 0 are
    merged): a probability map (non-integer values) is refused with a one-line error naming the file,
    instead of being binarised at > 0 silently. NaN / inf are refused in every mode. `ground_truth` only
    changes that error's advice (a threshold is for predictions, never for the ground truth).
    Returns a uint8 0/1 or bool array (the input itself when it is already uint8 0/1).
    """
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise InputError(f"{path}: mask contains NaN or infinite values")
    if label is not None:
        return data == label
    if threshold is not None:
        return data > threshold
    if data.dtype == np.bool_:
        return data
    if data.dtype == np.uint8:
        return data if data.max(initial=0) <= 1 else data > 0
    if data.dtype.kind == "f":
        fractional = data != np.round(data)
        if fractional.any():
            example = float(data[fractional].flat[0])
            advice = ("--threshold applies to predictions only: give the ground truth as a label mask"
                      if ground_truth else "pass --threshold T to binarise it")
            raise InputError(
                f"{path}: mask holds non-integer values (e.g. {example:g}), like a probability map; {advice}"
            )
    return data > 0
