"""Label-free intensity harmonisation: match a target volume's histogram onto a source reference.

The reference is the quantile function of the pooled intensities of the source training set's
preprocessed images (SpotTUnet's `hm` baseline: "target histograms matched to pooled source-train
intensities", REFERENCE.md §5), stored as landmarks at fixed percentiles. A target volume is mapped by the
piecewise-linear function that sends its own percentiles to the reference's landmarks (Nyúl & Udupa, "On
standardizing the MR image intensity scale", MRM 1999, with dense landmarks: every 1% by default instead
of their deciles, which approaches full histogram specification, Gonzalez & Woods §3.3). The map is
monotone, so a volume's quantiles at the landmark percentiles land on the reference's; ties in the
target (e.g. a zero background covering several percentiles) cannot be split by any voxel-wise map and
go to the mean of the reference landmarks they cover.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fewshot_da.atomic import write_text_atomic
from fewshot_da.errors import InputError

DEFAULT_PERCENTILES = tuple(float(p) for p in range(101))  # 0, 1, ..., 100
FORMAT = "fewshot-da histogram reference"


class HistogramReference(NamedTuple):
    """Intensities (`landmarks`) at increasing `percentiles` (0-100) of the pooled source intensities."""

    percentiles: tuple
    landmarks: tuple
    n_volumes: int
    n_voxels: int


def _as_array(volume) -> np.ndarray:
    """A volume's intensities: an array, or anything with an `.image` array (a CachedVolume)."""
    data = getattr(volume, "image", volume)
    return np.asarray(data, dtype=np.float64).ravel()


def _check_percentiles(percentiles) -> tuple:
    values = tuple(float(p) for p in percentiles)
    if len(values) < 2 or values[0] != 0.0 or values[-1] != 100.0 or np.any(np.diff(values) <= 0):
        raise InputError("histogram percentiles must increase from 0 to 100 (at least two)")
    return values


def fit_histogram_reference(volumes: Iterable, *, percentiles=DEFAULT_PERCENTILES,
                            bins: int = 65536) -> HistogramReference:
    """Landmarks of the pooled intensities of `volumes` (arrays or CachedVolumes) at `percentiles`.

    Pooling goes through a `bins`-bin histogram between the global min and max (two passes, memory
    independent of the number of volumes); a landmark differs from np.percentile of the pooled voxels by
    at most one bin width, (max - min) / bins (1.5e-5 for [0, 1] images), plus the gap between the
    neighbouring order statistics (rank p N instead of p (N - 1)). 0 and 100 are the exact min and max.
    """
    percentiles = _check_percentiles(percentiles)
    volumes = list(volumes)
    if not volumes:
        raise InputError("histogram reference: no source volumes to fit on")
    low, high, n_voxels = np.inf, -np.inf, 0
    for volume in volumes:
        data = _as_array(volume)
        if data.size == 0 or not np.isfinite(data).all():
            raise InputError("histogram reference: a source volume is empty or has NaN/inf intensities")
        low, high, n_voxels = min(low, data.min()), max(high, data.max()), n_voxels + data.size
    if high == low:
        landmarks = (float(low),) * len(percentiles)
        return HistogramReference(percentiles, landmarks, len(volumes), int(n_voxels))
    counts = np.zeros(bins, dtype=np.int64)
    for volume in volumes:
        index = np.minimum(((_as_array(volume) - low) * (bins / (high - low))).astype(np.int64), bins - 1)
        counts += np.bincount(index, minlength=bins)
    cumulative = np.concatenate([[0], np.cumsum(counts)])
    edges = low + (high - low) * np.arange(bins + 1) / bins
    rank = np.asarray(percentiles) / 100.0 * n_voxels
    j = np.clip(np.searchsorted(cumulative, rank, side="right") - 1, 0, bins - 1)
    inside = np.where(counts[j] > 0, (rank - cumulative[j]) / np.maximum(counts[j], 1), 0.0)
    landmarks = edges[j] + np.clip(inside, 0.0, 1.0) * (edges[j + 1] - edges[j])
    landmarks[0], landmarks[-1] = low, high
    return HistogramReference(percentiles, tuple(float(v) for v in np.maximum.accumulate(landmarks)),
                              len(volumes), int(n_voxels))


def match_histogram(image, reference: HistogramReference) -> np.ndarray:
    """`image` (any shape) mapped so its percentiles land on `reference.landmarks`; float64, same shape.

    Piecewise linear between the image's own percentiles (np.percentile, linear), so the output lies in
    [first landmark, last landmark]. A constant image maps to the mean landmark.
    """
    image = np.asarray(image, dtype=np.float64)
    if image.size == 0:
        return image.copy()
    if not np.isfinite(image).all():
        raise InputError("histogram matching: the image has NaN/inf intensities")
    own = np.percentile(image, reference.percentiles)
    values, group = np.unique(own, return_inverse=True)
    targets = np.bincount(group, weights=np.asarray(reference.landmarks)) / np.bincount(group)
    return np.interp(image, values, targets).reshape(image.shape)


def save_histogram_reference(reference: HistogramReference, path, **provenance) -> Path:
    """Write `reference` as JSON (plus any `provenance`, e.g. source ids) atomically; returns the path."""
    payload = {"format": FORMAT, "percentiles": list(reference.percentiles),
               "landmarks": list(reference.landmarks), "n_volumes": reference.n_volumes,
               "n_voxels": reference.n_voxels, **provenance}
    write_text_atomic(path, json.dumps(payload, indent=1))
    return Path(path)


def load_histogram_reference(path) -> HistogramReference:
    """Read a reference written by `save_histogram_reference`; one-line InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: histogram reference not found")
    try:
        payload = json.loads(path.read_text())
        percentiles = _check_percentiles(payload["percentiles"])
        landmarks = tuple(float(v) for v in payload["landmarks"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, InputError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a histogram reference ({reason})") from None
    if len(landmarks) != len(percentiles) or np.any(np.diff(landmarks) < 0) or not np.isfinite(landmarks).all():
        raise InputError(f"{path}: histogram landmarks must be finite, non-decreasing, one per percentile")
    return HistogramReference(percentiles, landmarks, int(payload.get("n_volumes", 0)),
                              int(payload.get("n_voxels", 0)))


def histogram_digest(path) -> str:
    """SHA-1 of a reference's percentiles and landmarks (not its formatting): part of the cache key."""
    reference = load_histogram_reference(path)
    text = json.dumps([list(reference.percentiles), list(reference.landmarks)])
    return hashlib.sha1(text.encode()).hexdigest()
