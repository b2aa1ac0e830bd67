"""Checks of a manifest's files as problems to report: headers (cheap), plus the voxel values of the masks."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from fewshot_da.data.io import check_voxel_spacing, is_image2d, is_nifti, stored_pixdim_mm
from fewshot_da.data.manifest import Record, domain_counts
from fewshot_da.errors import InputError


def _header(path: str):
    """(shape, affine or None) from the header only; raises on unreadable files, and InputError on a
    stored voxel spacing (pixdim) that is 0, negative or NaN (nibabel would silently make it 1 mm)."""
    if is_nifti(path):
        import nibabel as nib

        img = nib.load(path)
        check_voxel_spacing(stored_pixdim_mm(path), path)
        return tuple(img.shape), np.asarray(img.affine)
    if is_image2d(path):
        from PIL import Image

        with Image.open(path) as img:
            return (img.size[1], img.size[0], 1), None
    raise ValueError("unknown image format")


SPACING_RTOL = 1e-3  # relative difference between a manifest's spacing and a NIfTI header's that is refused


def spacing_disagreement(record: Record):
    """None, or one line naming the image when the manifest's `spacing` of a NIfTI scan differs from its header's
    voxel spacing by more than SPACING_RTOL (relative, per axis). The header is what preprocessing uses, so such
    a column would be silently ignored. One value stands for every axis; an axis the header lacks is 1 mm."""
    if record.spacing_mm is None or not is_nifti(record.image) or not Path(record.image).is_file():
        return None
    try:
        header = stored_pixdim_mm(record.image)
    except (OSError, EOFError, ValueError, InputError):  # an unreadable header is reported by the header checks
        return None
    given = tuple(float(v) for v in record.spacing_mm)
    header = header + (1.0,) * max(0, len(given) - len(header))
    given = given * len(header) if len(given) == 1 else given
    header = header[:len(given)]
    if np.allclose(given, header, rtol=SPACING_RTOL, atol=0):
        return None
    given_text, header_text = (" x ".join(f"{v:g}" for v in values) for values in (given, header))
    return (f"{record.image}: the manifest's spacing {given_text} mm differs from the NIfTI header's "
            f"{header_text} mm (scan {record.id}); the header is what is used: correct or empty the spacing column")


def mask_value_problem(record: Record):
    """None, or the one line `train` would stop with when the mask holds values other than 0/1 (0/255 in 2D
    images): the mask's voxels are read, with the data layer's own rule (`io.load_mask`, which names the values;
    a NIfTI mask that is plainly 0/1 is passed on its stored values, 7x faster)."""
    from fewshot_da.data.io import load_mask

    if is_nifti(record.mask):
        import nibabel as nib

        try:
            data = np.asanyarray(nib.load(record.mask).dataobj)  # the header's scaling applied, as load_mask
            if ((data == 0) | (data == 1)).all():
                return None
        except Exception:  # noqa: BLE001 - whatever failed, load_mask below names it in one line
            pass
    try:
        load_mask(record.mask, spacing_mm=record.spacing_mm if is_image2d(record.image) else None)
    except InputError as exc:
        return str(exc)
    return None


def find_problems(records: Sequence[Record], *, min_scans_per_domain: int = 5) -> list[str]:
    """One line per problem: missing/unreadable files, 4D images, image/mask shape or affine mismatch,
    a manifest spacing that disagrees with the NIfTI header, masks with values other than 0/1 (read in
    threads: the only check that reads voxels), duplicate ids, and domains with fewer than
    `min_scans_per_domain` scans (too few for the one2all split with 4 validation scans). An empty list
    means the manifest looks usable."""
    problems, seen, readable = [], set(), []
    for r in records:
        if r.id in seen:
            problems.append(f"{r.image}: duplicate id {r.id!r}")
        seen.add(r.id)
        headers = []
        for path in (r.image, r.mask):
            if not Path(path).is_file():
                problems.append(f"{path}: file not found (scan {r.id})")
                continue
            try:
                headers.append(_header(path))
            except InputError as exc:
                problems.append(str(exc))
            except Exception as exc:
                problems.append(f"{path}: unreadable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
        if len(headers) < 2:
            continue
        (image_shape, image_affine), (mask_shape, mask_affine) = headers
        if len([s for s in image_shape if s != 1]) > 3 or len(image_shape) > 4:
            problems.append(f"{r.image}: not 3D (shape {image_shape})")
        elif image_shape != mask_shape:
            problems.append(f"{r.mask}: mask shape {mask_shape} differs from image shape {image_shape}")
        elif image_affine is not None and mask_affine is not None and not np.allclose(
                image_affine, mask_affine, atol=1e-3, rtol=1e-4):
            problems.append(f"{r.mask}: mask affine differs from the image's")
        else:
            readable.append(r)
        disagreement = spacing_disagreement(r)
        if disagreement:
            problems.append(disagreement)
    # decoding a gzip stream releases the GIL, so threads overlap the reads
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1, len(readable)))) as pool:
        problems += [p for p in pool.map(mask_value_problem, readable) if p]
    for domain, count in domain_counts(records).items():
        if count < min_scans_per_domain:
            problems.append(f"domain {domain}: only {count} scan(s); fewer than {min_scans_per_domain} "
                            "cannot be a one2all source (target or oracle only)")
    return problems
