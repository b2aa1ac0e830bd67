"""Synthetic multi-scanner T1 head phantoms (scalp, skull, CSF, grey/white matter) in the CC359 layout.

Each scan is deterministic in (seed, domain, scan index). Anatomy varies per scan through smooth random
deformations; scanner domains differ as the seeds' scanners do: tissue contrast (intensity profile),
smooth multiplicative bias field, noise level and through-plane blur (slice thickness, array axis 0),
plus an arbitrary intensity unit per vendor. The ground truth is the brain mask (grey + white matter
and the ventricles inside them, as a brain-extraction mask), saved as `masks/<stem>_ss.nii.gz`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from fewshot_da.data.datasets import CC359_DOMAINS
from fewshot_da.data.manifest import Record
from fewshot_da.errors import InputError


@dataclass(frozen=True)
class ScannerProfile:
    """Intensities (arbitrary units, before `unit`) of background, scalp, skull, CSF, grey and white matter."""

    background: float
    scalp: float
    skull: float
    csf: float
    grey: float
    white: float
    bias_amplitude: float  # log-amplitude of the smooth multiplicative bias field
    noise_sigma: float  # Rician noise, relative to white matter = ~1
    blur_axis0_vox: float  # extra Gaussian sigma along array axis 0 (slice thickness)
    unit: float  # vendor intensity scale (removed by the percentile min-max scaling)


# Loosely after CC359: 3 T scans have stronger bias and better grey/white contrast; ge15 is the low-contrast,
# noisy outlier (the hardest target in the seeds); siemens3 has thick slices (1.33 mm in CC359).
PROFILES = {
    "siemens15": ScannerProfile(0.00, 0.75, 0.12, 0.20, 0.55, 0.80, 0.10, 0.030, 0.4, 1000.0),
    "siemens3": ScannerProfile(0.00, 0.85, 0.08, 0.12, 0.48, 0.85, 0.25, 0.035, 1.2, 1000.0),
    "ge15": ScannerProfile(0.03, 0.55, 0.28, 0.36, 0.64, 0.74, 0.15, 0.060, 0.6, 3000.0),
    "ge3": ScannerProfile(0.00, 0.92, 0.10, 0.17, 0.44, 0.78, 0.30, 0.035, 0.4, 3000.0),
    "philips15": ScannerProfile(0.01, 0.65, 0.18, 0.28, 0.60, 0.82, 0.12, 0.050, 0.7, 500.0),
    "philips3": ScannerProfile(0.00, 1.00, 0.16, 0.14, 0.40, 0.70, 0.35, 0.030, 0.4, 500.0),
}
# First CC359 id of each domain (the real ranges), so phantom names look like the real ones.
CC359_FIRST_ID = {"philips15": 1, "philips3": 60, "siemens15": 120, "siemens3": 180, "ge15": 240, "ge3": 300}

# Outer radii of the shells in the normalised (deformed) head radius.
BRAIN_RADIUS, CSF_RADIUS, SKULL_RADIUS, SCALP_RADIUS = 0.70, 0.77, 0.87, 1.0


def _upsampling_matrix(size: int, n_knots: int) -> np.ndarray:
    """(size, n_knots) matrix of 1D cubic-spline upsampling (zoom is linear and separable)."""
    return ndimage.zoom(np.eye(n_knots), (size / n_knots, 1), order=3, mode="nearest", grid_mode=True)[:size]


def _smooth_field(rng: np.random.Generator, shape, n_knots: int) -> np.ndarray:
    """Random field in about [-1, 1], smooth on the scale shape / n_knots (cubic upsampling of knots)."""
    knots = rng.uniform(-1.0, 1.0, size=(n_knots,) * 3)
    bx, by, bz = (_upsampling_matrix(s, n_knots) for s in shape)
    return np.einsum("ijk,xi,yj,zk->xyz", knots, bx, by, bz, optimize=True).astype(np.float32)


def phantom_volume(shape=(64, 64, 48), *, domain: str = "siemens15", seed: int = 0, scan: int = 0):
    """One phantom as (image float32, brain mask uint8), both of `shape`, deterministic in its arguments."""
    if domain not in PROFILES:
        raise InputError(f"phantom domain {domain!r} unknown (choose from {', '.join(PROFILES)})")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise InputError(f"phantom shape {shape} must be 3 sizes >= 8")
    profile = PROFILES[domain]
    # Anatomy depends on (seed, scan) only; the scanner adds its appearance from a separate stream.
    anatomy = np.random.default_rng([seed, scan, 0])
    scanner = np.random.default_rng([seed, scan, 1 + CC359_DOMAINS.index(domain) if domain in CC359_DOMAINS else 99])

    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    centre = np.array(shape) / 2.0 + anatomy.uniform(-0.03, 0.03, 3) * np.array(shape)
    semi_axes = np.array([0.46, 0.44, 0.46]) * np.array(shape) * anatomy.uniform(0.92, 1.05, 3)
    radius = np.sqrt(sum(((g - c) / a) ** 2 for g, c, a in zip(grid, centre, semi_axes)))
    radius = radius + 0.05 * _smooth_field(anatomy, shape, 4)
    brain_radius = radius + 0.04 * _smooth_field(anatomy, shape, 6)  # a wavier brain surface than the skull
    white = radius + 0.10 * _smooth_field(anatomy, shape, 7) < 0.48

    ventricle_offset = anatomy.uniform(0.06, 0.10) * np.array(shape)[1]
    ventricles = np.zeros(shape, dtype=bool)
    for side in (-1.0, 1.0):
        v_centre = centre + np.array([0.0, 0.0, side * ventricle_offset * 0.5]) + np.array([0, -0.05 * shape[1], 0])
        v_axes = np.array([0.18, 0.07, 0.05]) * np.array(shape) * anatomy.uniform(0.8, 1.2, 3)
        ventricles |= sum(((g - c) / a) ** 2 for g, c, a in zip(grid, v_centre, v_axes)) < 1.0

    brain = brain_radius < BRAIN_RADIUS
    image = np.full(shape, profile.background, dtype=np.float32)
    image[radius < SCALP_RADIUS] = profile.scalp
    image[radius < SKULL_RADIUS] = profile.skull
    image[radius < CSF_RADIUS] = profile.csf
    image[brain] = profile.grey
    image[brain & white] = profile.white
    image[brain & ventricles] = profile.csf

    image = ndimage.gaussian_filter(image, sigma=(0.6 + profile.blur_axis0_vox, 0.6, 0.6))
    bias = np.exp(profile.bias_amplitude * _smooth_field(scanner, shape, 3))
    image = image * bias * scanner.uniform(0.9, 1.1)
    noise = profile.noise_sigma
    image = np.sqrt((image + scanner.normal(0, noise, shape)) ** 2 + scanner.normal(0, noise, shape) ** 2)
    return (image * profile.unit).astype(np.float32), brain.astype(np.uint8)


def _cc359_name(domain: str, number: int, rng: np.random.Generator) -> str:
    vendor, tesla = domain.rstrip("0123456789"), domain[len(domain.rstrip("0123456789")):]
    age, sex = int(rng.integers(20, 80)), "MF"[int(rng.integers(0, 2))]
    return f"CC{number:04d}_{vendor}_{tesla}_{age}_{sex}"


def write_phantom_dataset(root, *, domains: Sequence[str] = CC359_DOMAINS, scans_per_domain: int = 3,
                          shape=(64, 64, 48), spacing_mm=(1.0, 1.0, 1.0), seed: int = 0) -> list[Record]:
    """Write phantoms as `root/images/CC####_<vendor>_<tesla>_<age>_<sex>.nii.gz` + `root/masks/<stem>_ss.nii.gz`.

    Returns the Records (sorted by id, as `index_cc359(root)` returns them). Scan i of every domain
    shares its anatomy (seed, i) so domains differ by scanner appearance only. spacing_mm is written
    to the header (array-axis order). Existing files with the same names are overwritten.
    """
    import nibabel as nib

    if scans_per_domain < 1:
        raise InputError(f"scans_per_domain must be >= 1, got {scans_per_domain}")
    unknown = [d for d in domains if d not in PROFILES]
    if unknown:
        raise InputError(f"phantom domain {unknown[0]!r} unknown (choose from {', '.join(PROFILES)})")
    shape = tuple(int(v) for v in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise InputError(f"phantom shape {shape} must be 3 sizes >= 8")
    if len(spacing_mm) != 3 or min(spacing_mm) <= 0:
        raise InputError(f"phantom spacing_mm {tuple(spacing_mm)} must be 3 positive numbers")
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    affine = np.diag([*map(float, spacing_mm), 1.0])
    affine[:3, 3] = -0.5 * np.array(shape) * np.array(spacing_mm, dtype=float)
    records = []
    for domain in domains:
        first = CC359_FIRST_ID[domain] if scans_per_domain <= 59 else 1 + CC359_DOMAINS.index(domain) * scans_per_domain
        names = np.random.default_rng([seed, 7, CC359_DOMAINS.index(domain)])
        for scan in range(scans_per_domain):
            stem = _cc359_name(domain, first + scan, names)
            image, mask = phantom_volume(shape, domain=domain, seed=seed, scan=scan)
            image_path, mask_path = root / "images" / f"{stem}.nii.gz", root / "masks" / f"{stem}_ss.nii.gz"
            for data, path in ((image, image_path), (mask, mask_path)):
                img = nib.Nifti1Image(data, affine)
                img.header.set_xyzt_units("mm")
                nib.save(img, str(path))
            records.append(Record(stem[:6], str(image_path), str(mask_path), domain, tuple(map(float, spacing_mm))))
    return sorted(records, key=lambda r: r.id)


def write_phantom_manifest(root, **options) -> list[Record]:
    """write_phantom_dataset(root, **options) plus `root/manifest.csv`; returns the Records."""
    from fewshot_da.data.manifest import write_manifest

    records = write_phantom_dataset(root, **options)
    write_manifest(records, Path(root) / "manifest.csv")
    return records
