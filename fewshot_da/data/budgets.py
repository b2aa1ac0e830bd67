"""Target-data budgets: N fine-tuning scans and the 1/k slice comb (REFERENCE.md §3); N images for 2D data.

One spelling for every file and plan: the label 'N' (N scans or images) or '1/k' (1/k of one scan's slices), ''
for no target labels (`budget_label`, read back by `parse_budget_label`); a folder-safe slug ('1_48'); a number
of scans for sorting and plotting (`budget_scans`); and a name for people ('1 scan', '1/48', '5 images').
"""
from __future__ import annotations

from fractions import Fraction
from typing import NamedTuple, Optional

import numpy as np

from fewshot_da.errors import InputError


class Budget(NamedTuple):
    """`n_scans` fine-tuning scans of the target, each restricted to the comb of interval `slice_interval`."""

    name: str
    n_scans: int
    slice_interval: int


# The seeds' settings: DART20 1/48 ... 1/3, 1 and 3 scans; DSA adds 2 scans.
REFERENCE_BUDGETS = (
    Budget("1/48", 1, 48), Budget("1/36", 1, 36), Budget("1/24", 1, 24), Budget("1/12", 1, 12),
    Budget("1/6", 1, 6), Budget("1/3", 1, 3), Budget("1 scan", 1, 1), Budget("2 scans", 2, 1),
    Budget("3 scans", 3, 1),
)
# 2D datasets (one-slice volumes) are offered image budgets; slice fractions mean nothing there.
IMAGE_BUDGETS = (1, 3, 5, 10, 20, 50, 100, 200, 500, 1000)


def image_budgets(n_images: int) -> list:
    """The IMAGE_BUDGETS a 2D target of `n_images` images allows (at least one image left to test on)."""
    return [Budget(budget_name(n, 1, unit="image"), n, 1) for n in IMAGE_BUDGETS if n < n_images]


def comb_slices(n_slices: int, k: int) -> np.ndarray:
    """Slice indices {0, k, 2k, ..., (n_slices // k - 1) k}, as the reference sampler draws from.

    The comb starts at the (usually empty) edge slice 0 and leaves out the last n_slices mod k slices;
    k = 1 gives every slice. Empty when n_slices < k.
    """
    if k < 1:
        raise InputError(f"slice interval k must be >= 1, got {k}")
    if n_slices < 0:
        raise InputError(f"number of slices must be >= 0, got {n_slices}")
    return np.arange(n_slices // k, dtype=np.int64) * k


def parse_slices(text) -> int:
    """'1/48' -> 48; '1' or 'all' -> 1 (every slice). The slice interval k of `--slices`."""
    value = str(text).strip().lower()
    if value in ("all", "1", "1/1"):
        return 1
    numerator, _, denominator = value.partition("/")
    try:
        if numerator.strip() != "1" or not denominator:
            raise ValueError
        k = int(denominator)
    except ValueError:
        raise InputError(f"--slices {text!r}: expected 1/k (e.g. 1/48) or 'all'") from None
    if k < 1:
        raise InputError(f"--slices {text!r}: k must be >= 1")
    return k


def budget_name(n_scans: int, k: int, unit: str = "scan") -> str:
    """'1/48' for one scan at interval 48, '3 scans' for three full scans, '5 images' with unit='image'."""
    if k > 1:
        return f"1/{k}" if n_scans == 1 else f"{n_scans} {unit}s 1/{k}"
    return f"1 {unit}" if n_scans == 1 else f"{n_scans} {unit}s"


def make_budget(n_scans: int = 1, slices="all", *, images2d: bool = False) -> Budget:
    """The budget of `--scans N --slices 1/k`: N fine-tuning scans, each restricted to the 1/k comb.

    images2d=True (a 2D target: every scan is one image): the budget counts images and a slice fraction
    is refused, since a one-slice image has no 1/k comb.
    """
    if n_scans < 1:
        raise InputError(f"--scans {n_scans}: need at least 1 fine-tuning {'image' if images2d else 'scan'}")
    k = parse_slices(slices)
    if images2d and k > 1:
        raise InputError(f"--slices {slices}: the target is 2D (one slice per image); "
                         "budgets count images (--scans N)")
    return Budget(budget_name(n_scans, k, unit="image" if images2d else "scan"), int(n_scans), k)


def budget_slices(budget: Budget, n_slices: dict) -> dict:
    """Allowed slice indices per fine-tuning scan: {scan id: comb_slices(S, k)} for `n_slices` = {id: S}."""
    return {scan_id: comb_slices(int(count), budget.slice_interval) for scan_id, count in n_slices.items()}


def budget_label(scans: Optional[int] = None, slices_k: Optional[int] = None, images: bool = False) -> str:
    """'3', '1' (scans or images), '1/48' (1/k of one scan's slices) or '' (no target labels)."""
    if scans is None:
        return ""
    if slices_k and slices_k > 1:
        return f"{int(scans)}/{int(slices_k)}" if scans != 1 else f"1/{int(slices_k)}"
    return str(int(scans))


def parse_budget_label(label, where: str = "budget") -> tuple:
    """'3' -> (3, None); '1/8' -> (1, 8): a plan's or results.csv's budget. One-line InputError otherwise."""
    text = str(label).strip()
    head, _, tail = text.partition("/")
    try:
        scans, k = int(head), (int(tail) if tail else None)
    except ValueError:
        raise InputError(f"{where} {label!r}: expected N (scans or images) or 1/k (a share of one scan)") from None
    if scans < 1 or (k is not None and (scans != 1 or k < 2)):
        raise InputError(f"{where} {label!r}: expected N >= 1 or 1/k with k >= 2")
    return scans, k


def budget_scans(label) -> float:
    """A budget label as a number of scans (1/48 -> 0.0208); '' (no labels) -> 0."""
    label = str(label).strip()
    if not label:
        return 0.0
    try:
        return float(Fraction(label))
    except (ValueError, ZeroDivisionError):
        raise InputError(f"budget {label!r} is not N or 1/k") from None


def budget_slug(label: str) -> str:
    """The label as a folder name: '1/48' -> '1_48'."""
    return str(label).replace("/", "_")


# SpotTUnet's lambda per budget (REFERENCE.md section 6: chosen on pairs 0-4, the code's normalisation), keyed by
# (scans, 1/k), its default, and the grid it was chosen from: the one copy of the paper's table.
PAPER_LAMBDA = {(3, 1): 0.0, (2, 1): 0.005, (1, 1): 0.005, (1, 3): 0.007, (1, 6): 0.005, (1, 12): 0.005,
                (1, 24): 0.012, (1, 36): 0.007, (1, 48): 0.010}
DEFAULT_LAMBDA = 0.005
LAMBDA_GRID = (0.0, 0.001, 0.003, 0.005, 0.007, 0.010, 0.012, 0.015, 0.020)


def paper_lambda(scans, slices_k) -> float:
    """The paper's lambda for a budget (N scans, 1/k of a scan); 0.005 where the paper chose none."""
    return PAPER_LAMBDA.get((int(scans or 1), int(slices_k or 1)), DEFAULT_LAMBDA)
