"""Independent NumPy/SciPy oracle for the surface metrics (slow; the tests compare the C++ core with it).

Follows the definition of DeepMind's surface-distance (Nikolov et al.) directly on the full array: corner
codes by array slicing, borders = mixed codes, distances by `scipy.ndimage.distance_transform_edt` with
`sampling=spacing_mm`, areas from the marching-cubes normal table below. No cropping, no stencil, no
shared code with the compiled core.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
from scipy import ndimage

from fewshot_da.metrics.surface import SurfaceDistances

# DeepMind's surfel normals per 3D neighbour code (codes 0..255 in order, whitespace-separated), in 1/8:
# normals separated by ";", components by ","; "-" = no surfel. A normal's length is a triangle area.
_NORMALS_EIGHTHS = """
    - 1,1,1 -1,-1,1 -2,-2,0;2,2,0 1,-1,1 -2,0,-2;2,0,2 1,-1,1;-1,-1,1 4,0,0;2,2,2;1,1,1 -1,1,1 1,1,1;-1,1,1
    -2,0,2;-2,0,2 4,0,0;-2,-2,2;-1,-1,1 2,-2,0;2,-2,0 4,0,0;2,-2,2;-1,1,-1 -4,0,0;-2,2,2;-1,1,1 4,0,0;4,0,0
    1,-1,-1 0,-2,-2;0,2,2 -1,-1,1;1,-1,-1 0,-4,0;2,2,2;1,1,1 1,-1,1;1,-1,-1 0,0,-4;2,2,2;-1,-1,-1
    -1,-1,1;1,-1,1;1,-1,-1 -1,-1,-1;-2,-2,-2;2,2,2;1,1,1 -1,1,1;1,-1,-1 0,-2,-2;0,2,2;-1,1,1
    -2,0,2;-2,0,2;1,-1,-1 1,1,1;3,3,3;0,-2,2;-2,0,2 1,-1,-1;2,-2,0;2,-2,0 3,3,3;0,2,-2;-1,-1,-1;-2,2,0
    -4,0,0;-1,-1,-1;-2,-2,-2;1,1,1 -4,0,0;-1,-1,-1;-2,-2,-2 1,-1,1 1,1,1;1,-1,1 0,-2,2;0,2,-2
    0,-4,0;1,1,-1;2,2,-2 1,-1,1;1,-1,1 1,-1,1;-2,0,-2;2,0,2 0,-2,2;0,2,-2;1,-1,1
    -3,-3,3;0,2,2;1,1,-1;-2,0,-2 -1,1,1;1,-1,1 1,1,1;1,-1,1;-1,1,1 0,0,4;-2,-2,2;-1,-1,1
    2,2,-2;2,2,-2;1,1,-1;-1,-1,1 1,-1,1;2,-2,0;2,-2,0 4,0,0;2,-2,2;-1,1,-1;1,-1,1
    0,2,-2;3,-3,-3;-1,1,1;2,2,0 -4,0,0;-2,-2,2;-1,-1,1 2,-2,0;-2,2,0 0,4,0;-2,2,2;1,-1,-1
    0,4,0;1,-1,1;-2,2,-2 0,4,0;0,-4,0 2,-2,0;-2,2,0;1,-1,1 -3,-3,-3;-2,0,2;-1,-1,-1;-2,2,0
    1,1,1;0,-4,0;-2,-2,-2;-1,-1,-1 0,-4,0;-2,-2,-2;-1,-1,-1 -1,1,1;2,-2,0;-2,2,0
    0,4,0;2,2,-2;-1,-1,1;-1,-1,1 -3,3,-3;-2,-2,0;-1,1,-1;-2,0,2 0,4,0;2,2,-2;-1,-1,1
    2,-2,0;-2,2,0;2,-2,0;2,-2,0 -2,-2,0;-2,-2,0;-1,-1,1 1,1,1;-2,-2,0;-2,-2,0 -2,-2,0;-2,-2,0 -1,-1,1
    1,1,1;-1,-1,1 -1,-1,1;-1,-1,1 -1,-1,1;-2,-2,0;2,2,0 0,-2,2;0,-2,2 0,0,4;2,-2,2;1,-1,1
    0,-2,2;0,-2,2;-1,-1,1 3,-3,3;0,-2,-2;-1,1,-1;2,2,0 -1,-1,1;-1,1,1 1,1,1;-1,-1,1;-1,1,1
    -1,-1,1;-2,0,2;-2,0,2 4,0,0;-2,-2,2;-1,-1,1;-1,-1,1 0,4,0;-2,2,-2;1,-1,1 -2,2,-2;-2,2,-2;-1,1,-1;-1,1,-1
    -2,0,-2;3,-3,-3;0,2,-2;-1,1,1 4,0,0;-2,2,-2;1,-1,1 -2,0,2;2,0,-2 0,0,4;-2,2,2;-1,1,1
    -1,-1,1;-2,0,2;2,0,-2 -2,0,-2;-3,3,3;-2,-2,0;-1,1,1 0,0,-4;2,2,-2;-1,-1,1 0,0,4;0,0,4
    1,1,1;1,1,1;2,2,2;0,0,4 1,1,1;2,2,2;0,0,4 -2,0,2;2,0,-2;-1,1,1 0,0,4;2,-2,2;1,-1,1;1,-1,1
    -2,0,2;-2,0,2;-2,0,2;2,0,-2 1,-1,1;2,0,2;2,0,2 2,0,2;-3,-3,3;-2,2,0;-1,-1,1 0,0,4;2,-2,2;1,-1,1
    1,1,1;2,0,2;2,0,2 2,0,2;2,0,2 -1,-1,1;1,-1,1 1,1,1;-1,-1,1;1,-1,1 -1,-1,1;0,-2,2;0,2,-2
    0,-4,0;1,1,-1;2,2,-2;-1,-1,1 0,-2,2;0,-2,2;1,-1,1 0,0,4;2,-2,2;1,-1,1;1,-1,1 0,-2,2;0,-2,2;0,-2,2;0,2,-2
    0,2,2;0,2,2;1,-1,-1 -1,1,1;1,-1,1;-1,-1,1 -1,1,1;1,-1,1;-1,-1,1;1,1,1 0,0,4;-2,-2,2;-1,-1,1;-1,-1,1
    1,1,1;1,-1,1;1,-1,-1 0,4,0;-2,2,-2;1,-1,1;1,-1,1 1,1,1;-1,-1,1;1,-1,-1 0,-2,-2;0,2,2;1,1,1 1,1,1;1,-1,-1
    4,0,0;2,-2,-2;1,-1,-1 -2,2,2;-1,1,1;-2,2,2;1,-1,-1 3,-3,3;0,2,2;-1,1,-1;-2,0,2 0,-4,0;-2,2,2;-1,1,1
    -3,-3,3;2,-2,0;0,2,2;-1,-1,1 -1,1,1;-2,2,2;0,0,4 1,1,1;0,2,2;0,2,2 0,2,2;0,2,2 4,0,0;2,2,2;1,1,1;1,1,1
    1,-1,1;-1,-1,1;1,1,1 -2,0,-2;2,0,2;1,1,1 1,1,1;1,-1,1 -2,-2,0;2,2,0;1,1,1 1,1,1;-1,-1,1 1,1,1;1,1,1
    1,1,1 1,1,1 1,1,1;1,1,1 1,1,1;-1,-1,1 -2,-2,0;2,2,0;1,1,1 1,1,1;1,-1,1 -2,0,-2;2,0,2;1,1,1
    1,-1,1;-1,-1,1;1,1,1 4,0,0;2,2,2;1,1,1;1,1,1 0,2,2;0,2,2 1,1,1;0,2,2;0,2,2 -1,1,1;-2,2,2;0,0,4
    -3,-3,3;2,-2,0;0,2,2;-1,-1,1 0,-4,0;-2,2,2;-1,1,1 3,-3,3;0,2,2;-1,1,-1;-2,0,2
    -2,2,2;-1,1,1;-2,2,2;1,-1,-1 4,0,0;2,-2,-2;1,-1,-1 1,1,1;1,-1,-1 0,-2,-2;0,2,2;1,1,1
    1,1,1;-1,-1,1;1,-1,-1 0,4,0;-2,2,-2;1,-1,1;1,-1,1 1,1,1;1,-1,1;1,-1,-1 0,0,4;-2,-2,2;-1,-1,1;-1,-1,1
    -1,1,1;1,-1,1;-1,-1,1;1,1,1 -1,1,1;1,-1,1;-1,-1,1 0,2,2;0,2,2;1,-1,-1 0,-2,-2;0,2,2;0,2,2;0,2,2
    0,0,4;2,-2,2;1,-1,1;1,-1,1 0,-2,2;0,-2,2;1,-1,1 0,-4,0;1,1,-1;2,2,-2;-1,-1,1 -1,-1,1;0,-2,2;0,2,-2
    1,1,1;-1,-1,1;1,-1,1 -1,-1,1;1,-1,1 2,0,2;2,0,2 1,1,1;2,0,2;2,0,2 0,0,4;2,-2,2;1,-1,1
    2,0,2;-3,-3,3;-2,2,0;-1,-1,1 1,-1,1;2,0,2;2,0,2 -2,0,-2;2,0,2;2,0,2;2,0,2 0,0,4;2,-2,2;1,-1,1;1,-1,1
    -2,0,2;2,0,-2;-1,1,1 1,1,1;2,2,2;0,0,4 1,1,1;1,1,1;2,2,2;0,0,4 0,0,4;0,0,4 0,0,-4;2,2,-2;-1,-1,1
    -2,0,-2;-3,3,3;-2,-2,0;-1,1,1 -1,-1,1;-2,0,2;2,0,-2 0,0,4;-2,2,2;-1,1,1 -2,0,2;2,0,-2
    4,0,0;-2,2,-2;1,-1,1 -2,0,-2;3,-3,-3;0,2,-2;-1,1,1 -2,2,-2;-2,2,-2;-1,1,-1;-1,1,-1 0,4,0;-2,2,-2;1,-1,1
    4,0,0;-2,-2,2;-1,-1,1;-1,-1,1 -1,-1,1;-2,0,2;-2,0,2 1,1,1;-1,-1,1;-1,1,1 -1,-1,1;-1,1,1
    3,-3,3;0,-2,-2;-1,1,-1;2,2,0 0,-2,2;0,-2,2;-1,-1,1 0,0,4;2,-2,2;1,-1,1 0,-2,2;0,-2,2
    -1,-1,1;-2,-2,0;2,2,0 -1,-1,1;-1,-1,1 1,1,1;-1,-1,1 -1,-1,1 -2,-2,0;-2,-2,0 1,1,1;-2,-2,0;-2,-2,0
    -2,-2,0;-2,-2,0;-1,-1,1 -2,-2,0;-2,-2,0;-2,-2,0;2,2,0 0,4,0;2,2,-2;-1,-1,1
    -3,3,-3;-2,-2,0;-1,1,-1;-2,0,2 0,4,0;2,2,-2;-1,-1,1;-1,-1,1 -1,1,1;2,-2,0;-2,2,0
    0,-4,0;-2,-2,-2;-1,-1,-1 1,1,1;0,-4,0;-2,-2,-2;-1,-1,-1 -3,-3,-3;-2,0,2;-1,-1,-1;-2,2,0
    2,-2,0;-2,2,0;1,-1,1 0,4,0;0,-4,0 0,4,0;1,-1,1;-2,2,-2 0,4,0;-2,2,2;1,-1,-1 2,-2,0;-2,2,0
    -4,0,0;-2,-2,2;-1,-1,1 0,2,-2;3,-3,-3;-1,1,1;2,2,0 4,0,0;2,-2,2;-1,1,-1;1,-1,1 1,-1,1;2,-2,0;2,-2,0
    2,2,-2;2,2,-2;1,1,-1;-1,-1,1 0,0,4;-2,-2,2;-1,-1,1 1,1,1;1,-1,1;-1,1,1 -1,1,1;1,-1,1
    -3,-3,3;0,2,2;1,1,-1;-2,0,-2 0,-2,2;0,2,-2;1,-1,1 1,-1,1;-2,0,-2;2,0,2 1,-1,1;1,-1,1
    0,-4,0;1,1,-1;2,2,-2 0,-2,2;0,2,-2 1,1,1;1,-1,1 1,-1,1 -4,0,0;-1,-1,-1;-2,-2,-2
    -4,0,0;-1,-1,-1;-2,-2,-2;1,1,1 3,3,3;0,2,-2;-1,-1,-1;-2,2,0 1,-1,-1;2,-2,0;2,-2,0
    1,1,1;3,3,3;0,-2,2;-2,0,2 -2,0,2;-2,0,2;1,-1,-1 0,-2,-2;0,2,2;-1,1,1 -1,1,1;1,-1,-1
    -1,-1,-1;-2,-2,-2;2,2,2;1,1,1 -1,-1,1;1,-1,1;1,-1,-1 0,0,-4;2,2,2;-1,-1,-1 1,-1,1;1,-1,-1
    0,-4,0;2,2,2;1,1,1 -1,-1,1;1,-1,-1 0,-2,-2;0,2,2 1,-1,-1 4,0,0;4,0,0 -4,0,0;-2,2,2;-1,1,1
    4,0,0;2,-2,2;-1,1,-1 2,-2,0;2,-2,0 4,0,0;-2,-2,2;-1,-1,1 -2,0,2;-2,0,2 1,1,1;-1,1,1 -1,1,1
    4,0,0;2,2,2;1,1,1 1,-1,1;-1,-1,1 -2,0,-2;2,0,2 1,-1,1 -2,-2,0;2,2,0 -1,-1,1 1,1,1 -
"""


def _normals_3d():
    codes = _NORMALS_EIGHTHS.split()
    assert len(codes) == 256
    return [
        [] if c == "-" else [tuple(int(v) / 8 for v in n.split(",")) for n in c.split(";")] for c in codes
    ]


def surfel_areas(spacing_mm) -> np.ndarray:
    """Area (mm^2) of each 3D code, or length (mm) of each 2D code, for this spacing."""
    return _surfel_areas(tuple(float(s) for s in spacing_mm)).copy()


@functools.lru_cache(maxsize=64)
def _surfel_areas(spacing_mm: tuple) -> np.ndarray:
    if len(spacing_mm) == 3:
        s0, s1, s2 = (float(s) for s in spacing_mm)
        areas = np.zeros(256)
        for code, normals in enumerate(_normals_3d()):
            areas[code] = sum(
                np.linalg.norm([n0 * s1 * s2, n1 * s0 * s2, n2 * s0 * s1]) for n0, n1, n2 in normals
            )
        return areas
    s0, s1 = (float(s) for s in spacing_mm)
    diag = 0.5 * math.sqrt(s0 * s0 + s1 * s1)
    lengths = np.zeros(16)
    for code in range(1, 15):
        bits = [(code >> (3 - k)) & 1 for k in range(4)]  # (0,0), (0,1), (1,0), (1,1)
        if sum(bits) in (1, 3):
            lengths[code] = diag  # a corner cut off
        elif bits[0] == bits[1]:
            lengths[code] = s1  # top row vs bottom row: a horizontal segment
        elif bits[0] == bits[2]:
            lengths[code] = s0  # left column vs right column: a vertical segment
        else:
            lengths[code] = 2 * diag  # opposite corners: two cuts
    return lengths


def corner_codes(mask) -> np.ndarray:
    """Neighbour code of every voxel corner (shape + 1 per axis); outside the array is background."""
    mask = np.asarray(mask) != 0
    nd = mask.ndim
    padded = np.pad(mask, 1).astype(np.int64)
    codes = np.zeros(tuple(n + 1 for n in mask.shape), np.int64)
    # voxel (c - 1 + a) of each axis carries bit (2**nd - 1) - index of a in C order
    for bit, offset in enumerate(itertools.product((0, 1), repeat=nd)):
        weight = 1 << ((1 << nd) - 1 - bit)
        window = tuple(slice(o, o + n + 1) for o, n in zip(offset, mask.shape))
        codes += weight * padded[window]
    return codes


def surface_distances(gt, pred, *, spacing_mm) -> SurfaceDistances:
    """Directed distances and surfel areas, surfels in raster order of the corner grid."""
    spacing_mm = tuple(float(s) for s in spacing_mm)
    full = (1 << (1 << np.asarray(gt).ndim)) - 1
    codes = [corner_codes(gt), corner_codes(pred)]
    borders = [(c != 0) & (c != full) for c in codes]
    if not (borders[0].any() or borders[1].any()):
        empty = np.zeros(0)
        return SurfaceDistances(empty, empty, empty, empty)
    dist = [
        ndimage.distance_transform_edt(~b, sampling=spacing_mm) if b.any() else np.full(b.shape, np.inf)
        for b in borders
    ]
    areas = surfel_areas(spacing_mm)
    return SurfaceDistances(
        gt_to_pred_mm=dist[1][borders[0]],
        pred_to_gt_mm=dist[0][borders[1]],
        gt_areas_mm2=areas[codes[0][borders[0]]],
        pred_areas_mm2=areas[codes[1][borders[1]]],
    )


def surface_dice(gt, pred, *, spacing_mm, tolerance_mm, distances=None) -> float:
    """Surface Dice from the oracle's distances (pass `distances` to reuse them across tolerances)."""
    d = surface_distances(gt, pred, spacing_mm=spacing_mm) if distances is None else distances
    total = d.gt_areas_mm2.sum() + d.pred_areas_mm2.sum()
    if total == 0:
        return float("nan")
    within = (
        d.gt_areas_mm2[d.gt_to_pred_mm <= tolerance_mm].sum()
        + d.pred_areas_mm2[d.pred_to_gt_mm <= tolerance_mm].sum()
    )
    return float(within / total)


def adjusted_rand_index_pairs(gt, pred) -> float:
    """ARI by explicit pair counting over all pixel pairs (O(n^2); tiny inputs only)."""
    a, b = np.asarray(gt).ravel(), np.asarray(pred).ravel()
    i, j = np.triu_indices(a.size, k=1)
    same_a, same_b = a[i] == a[j], b[i] == b[j]
    tp = int(np.sum(same_a & same_b))
    fn = int(np.sum(same_a & ~same_b))
    fp = int(np.sum(~same_a & same_b))
    tn = int(np.sum(~same_a & ~same_b))
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))
