"""Header-level checks of a manifest's files (cheap: no voxel data is read), as problems to report."""
from __future__ import annotations

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


def find_problems(records: Sequence[Record], *, min_scans_per_domain: int = 5) -> list[str]:
    """One line per problem: missing/unreadable files, 4D images, image/mask shape or affine mismatch,
    duplicate ids, and domains with fewer than `min_scans_per_domain` scans (too few for the one2all
    split with 4 validation scans). An empty list means the manifest looks usable."""
    problems, seen = [], set()
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
    for domain, count in domain_counts(records).items():
        if count < min_scans_per_domain:
            problems.append(f"domain {domain}: only {count} scan(s); fewer than {min_scans_per_domain} "
                            "cannot be a one2all source (target or oracle only)")
    return problems
