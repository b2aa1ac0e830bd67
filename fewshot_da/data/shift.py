"""Simulated scanner shift: held-out scans re-written with another intensity profile, bias field, noise and blur.

Used to make a real second "domain" from one-site data (e.g. IXI-HH): the anatomy and the masks stay, the
appearance changes the way scanners differ (REFERENCE.md §2 lists vendor and field strength as the shift).
The subjects that get shifted are moved out of their original domain, so no anatomy is seen in both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from fewshot_da.data.io import is_nifti, load_volume
from fewshot_da.data.manifest import Record, check_unique_ids, read_manifest, write_manifest
from fewshot_da.data.phantoms import _smooth_field
from fewshot_da.errors import InputError


@dataclass(frozen=True)
class ScannerShift:
    """gamma: intensity exponent on [0, 1]-scaled intensities (< 1 brightens dark tissue, flattening contrast);
    bias_amplitude: log-amplitude of a smooth multiplicative field; noise_sigma: Rician noise relative to the
    99th percentile; blur_sigma_vox: Gaussian blur per array axis (slice thickness)."""

    gamma: float = 0.6
    bias_amplitude: float = 0.35
    noise_sigma: float = 0.04
    blur_sigma_vox: tuple = (0.0, 0.0, 1.0)

    def __post_init__(self):
        """One-line errors naming the CLI option: gamma finite and > 0; the others finite and >= 0."""
        checks = (("--gamma", self.gamma, "> 0", lambda v: v > 0), ("--bias", self.bias_amplitude, ">= 0", None),
                  ("--noise", self.noise_sigma, ">= 0", None))
        for option, value, rule, ok in checks:
            value = float(value)
            if not math.isfinite(value) or not (ok(value) if ok else value >= 0):
                raise InputError(f"{option} {value:g}: must be finite and {rule}")
        if not all(math.isfinite(float(s)) and float(s) >= 0 for s in self.blur_sigma_vox):
            raise InputError(f"blur_sigma_vox {self.blur_sigma_vox}: must be finite and >= 0")


def shift_image(image: np.ndarray, shift: ScannerShift, seed: int) -> np.ndarray:
    """`image` (any 3D array) with `shift` applied; deterministic in `seed`; float32, same shape, >= 0."""
    rng = np.random.default_rng(seed)
    image = np.asarray(image, dtype=np.float32)
    top = float(np.percentile(image, 99)) or 1.0
    x = np.clip(image / top, 0, None) ** shift.gamma
    if any(s > 0 for s in shift.blur_sigma_vox):
        x = ndimage.gaussian_filter(x, sigma=shift.blur_sigma_vox)
    x = x * np.exp(shift.bias_amplitude * _smooth_field(rng, x.shape, 3))
    n = shift.noise_sigma
    x = np.sqrt((x + rng.normal(0, n, x.shape)) ** 2 + rng.normal(0, n, x.shape) ** 2)
    return (x * top).astype(np.float32)


def write_shifted_domain(records: Sequence[Record], ids: Sequence[str], out_dir, *, domain: str,
                         shift: ScannerShift = ScannerShift(), seed: int = 0) -> list[Record]:
    """Write shifted copies of the scans `ids` into `out_dir` (images/ + masks/ as NIfTI) and return the new
    manifest: the other records unchanged, the shifted ones under `domain` (ids suffixed with '-shift').
    Refused in one line before anything is written: a 2D (non-NIfTI) scan, a `domain` the manifest already has,
    a shifted id that collides with an existing one."""
    import nibabel as nib

    by_id = {r.id: r for r in records}
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise InputError(f"scan id {unknown[0]!r} is not in the manifest")
    flat = [by_id[i].image for i in ids if not is_nifti(by_id[i].image)]
    if flat:
        raise InputError(f"{flat[0]}: not a NIfTI volume; data shift simulates a scanner on 3D NIfTI scans only")
    taken = [r.domain for r in records if r.domain == domain]
    if taken:
        raise InputError(f"the shifted domain {domain!r} is already a domain of the manifest (merging into it would "
                         "mix real and simulated scans); pick another --new-domain")
    check_unique_ids([r for r in records if r.id not in set(ids)]
                     + [Record(f"{i}-shift", "", "", domain) for i in ids], "shifted ids (<id>-shift)")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    chosen = set(ids)
    shifted = []
    for n, scan_id in enumerate(ids):
        record = by_id[scan_id]
        volume = load_volume(record.image)
        image = shift_image(volume.data, shift, seed=seed * 100003 + n)
        new_id = f"{scan_id}-shift"
        image_path = out_dir / "images" / f"{new_id}.nii.gz"
        mask_path = out_dir / "masks" / f"{new_id}.nii.gz"
        nib.save(nib.Nifti1Image(image, volume.affine), str(image_path))
        mask = nib.load(record.mask)
        nib.save(nib.Nifti1Image(np.asarray(mask.dataobj).astype(np.uint8), mask.affine), str(mask_path))
        shifted.append(Record(new_id, str(image_path), str(mask_path), domain, record.spacing_mm))
    return [r for r in records if r.id not in chosen] + shifted


def shift_domain(manifest, domain: str, n_scans: int, out_dir, out_manifest, *, new_domain=None,
                 shift: ScannerShift = ScannerShift(), seed: int = 0) -> list[Record]:
    """Move `n_scans` scans of `domain` (drawn with `seed`) into `new_domain` as shifted copies; write the
    full manifest to `out_manifest` and return its records."""
    records = read_manifest(manifest)
    ids = [r.id for r in records if r.domain == domain]
    if not ids:
        raise InputError(f"{manifest}: no scan of domain {domain!r} "
                         f"(domains: {', '.join(dict.fromkeys(r.domain for r in records))})")
    if len(ids) <= n_scans:
        raise InputError(f"{manifest}: domain {domain!r} has {len(ids)} scans; shifting {n_scans} would leave none")
    chosen = sorted(np.random.RandomState(seed).choice(ids, n_scans, replace=False).tolist())
    out = write_shifted_domain(records, chosen, out_dir, domain=new_domain or f"{domain}-shift", shift=shift, seed=seed)
    write_manifest(out, out_manifest)
    return out
