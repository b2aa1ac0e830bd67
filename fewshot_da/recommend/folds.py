"""Internal validation folds over the user's labelled target slices, and the smaller training sets of a
learning curve. A fold fine-tunes on some labelled slices and scores others: whole held-out scans (K-fold over
scans, leave-one-scan-out when there are few), or, with a single labelled scan, the other half of its labelled
slices: two contiguous slabs (the default), or interleaved (every other labelled slice, so both halves cover the
same anatomy, as a 1/k comb does). On the phantom pairs the slabs picked the measured winner more often
(docs/studies/recommend_one_scan.py): interleaved halves test on neighbours of the training slices, which
flatters fine-tuning as much as slabs flatter not fine-tuning."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..data.budgets import comb_slices
from ..errors import InputError


@dataclass(frozen=True)
class Part:
    """Labelled slices `slices` (ascending indices) of volume number `scan`."""

    scan: int
    slices: tuple

    @property
    def n(self) -> int:
        return len(self.slices)


@dataclass(frozen=True)
class Fold:
    """One validation split: fine-tune on `train`, score `test`."""

    name: str
    train: tuple
    test: tuple

    @property
    def n_train_slices(self) -> int:
        return sum(p.n for p in self.train)


def labelled_parts(n_slices, k: int) -> list:
    """The labelled slices of each scan: the 1/k comb {0, k, 2k, ...} (k = 1: all); refuses a scan too thin."""
    parts = []
    for scan, count in enumerate(n_slices):
        comb = comb_slices(int(count), int(k))
        if comb.size == 0:
            raise InputError(f"--slices 1/{k}: labelled scan number {scan + 1} has only {count} slices")
        parts.append(Part(scan, tuple(int(i) for i in comb)))
    return parts


ONE_SCAN_FOLDS = ("slab", "interleave")  # how one labelled scan is split; the first is the default


def one_scan_halves(part: Part, how: str = ONE_SCAN_FOLDS[0]) -> tuple:
    """The two halves of one scan's labelled slices: 'interleave' = labelled slices 1st, 3rd, 5th ... and 2nd,
    4th ... (each a regular comb of twice the labelled interval, both spanning the whole scan); 'slab' = the
    first and the second half in slice order."""
    if how == "interleave":
        return Part(part.scan, part.slices[0::2]), Part(part.scan, part.slices[1::2])
    if how == "slab":
        half = part.n // 2
        return Part(part.scan, part.slices[:half]), Part(part.scan, part.slices[half:])
    raise InputError(f"--one-scan-folds {how!r}: choose {' or '.join(ONE_SCAN_FOLDS)}")


def validation_folds(parts, *, max_folds: int = 5, seed: int = 0, one_scan: str = ONE_SCAN_FOLDS[0]) -> list:
    """K-fold over scans with K = min(#scans, max_folds) (seeded assignment; leave-one-scan-out when #scans <=
    max_folds); one scan: its labelled slices in two halves (`one_scan`: 'slab' or 'interleave', see
    one_scan_halves), each the other's test set."""
    if max_folds < 2:
        raise InputError(f"--max-folds {max_folds}: need at least 2 folds")
    if len(parts) == 1:
        only = parts[0]
        if only.n < 2:
            raise InputError("one labelled scan with a single labelled slice: nothing is left to validate on; "
                             "label more slices or scans")
        first, second = one_scan_halves(only, one_scan)
        name = "comb" if one_scan == "interleave" else "slab"
        return [Fold(f"{name}-1", (first,), (second,)), Fold(f"{name}-2", (second,), (first,))]
    if one_scan not in ONE_SCAN_FOLDS:
        raise InputError(f"--one-scan-folds {one_scan!r}: choose {' or '.join(ONE_SCAN_FOLDS)}")
    order = np.random.default_rng([seed, 7]).permutation(len(parts))
    groups = np.array_split(order, min(len(parts), int(max_folds)))
    folds = []
    for f, held in enumerate(groups):
        held = set(int(i) for i in held)
        folds.append(Fold(f"fold-{f + 1}", tuple(p for p in parts if p.scan not in held),
                          tuple(p for p in parts if p.scan in held)))
    return folds


def curve_folds(fold: Fold, *, points: int = 4, min_slices: int = 2) -> list:
    """`fold` with smaller training sets for a learning curve, largest first (the fold itself included):
    halving the number of training scans, then halving the slices of one scan (every 2nd, 4th ... labelled
    slice), down to `min_slices` slices or `points` sizes."""
    out, seen = [fold], {fold.n_train_slices}
    n_scans = len(fold.train)
    while n_scans > 1 and len(out) < points:
        n_scans = max(1, n_scans // 2)
        smaller = replace(fold, name=f"{fold.name}-{n_scans}scans", train=fold.train[:n_scans])
        if smaller.n_train_slices not in seen:
            out.append(smaller)
            seen.add(smaller.n_train_slices)
    first = fold.train[0]
    step = 2
    while len(out) < points:
        kept = first.slices[::step]
        if len(kept) < min_slices:
            break
        smaller = replace(fold, name=f"{fold.name}-1of{step}", train=(Part(first.scan, kept),))
        if smaller.n_train_slices not in seen:
            out.append(smaller)
            seen.add(smaller.n_train_slices)
        step *= 2
    return out


def sub_volume(volume, slices):
    """The volume restricted to `slices` (a regular comb or block), as a volume: its slice spacing is the comb
    interval times the original, so 3D surface metrics on it stay in mm."""
    idx = np.asarray(slices, dtype=np.int64)
    step = int(idx[1] - idx[0]) if idx.size > 1 else 1
    if idx.size > 1 and np.any(np.diff(idx) != step):
        raise ValueError(f"sub_volume: slices {list(idx)} are not evenly spaced")
    spacing = (float(volume.spacing_mm[0]) * step, *(float(s) for s in volume.spacing_mm[1:]))
    name = f"{volume.id}[{idx[0]}:{idx[-1] + 1}:{step}]" if idx.size < volume.n_slices else volume.id
    return replace(volume, id=name, image=np.asarray(volume.image[idx]), mask=np.asarray(volume.mask[idx]),
                   spacing_mm=spacing)
