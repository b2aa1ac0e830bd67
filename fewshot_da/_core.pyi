"""Type stub for the compiled core (metrics part); the documented API is fewshot_da.metrics."""
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

def surface_dice_areas(
    gt: npt.NDArray[np.uint8] | npt.NDArray[np.bool_],
    pred: npt.NDArray[np.uint8] | npt.NDArray[np.bool_],
    spacing_mm: Sequence[float],
    tolerances_mm: Sequence[float],
    num_threads: int = 0,
) -> npt.NDArray[np.float64]: ...
def surface_distances(
    gt: npt.NDArray[np.uint8] | npt.NDArray[np.bool_],
    pred: npt.NDArray[np.uint8] | npt.NDArray[np.bool_],
    spacing_mm: Sequence[float],
    num_threads: int = 0,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]: ...
def surface_dice_areas_plain(
    gt: npt.NDArray[np.uint8] | npt.NDArray[np.bool_],
    pred: npt.NDArray[np.uint8] | npt.NDArray[np.bool_],
    spacing_mm: Sequence[float],
    tolerances_mm: Sequence[float],
) -> npt.NDArray[np.float64]: ...
def corner_codes(mask: npt.NDArray[np.uint8] | npt.NDArray[np.bool_]) -> npt.NDArray[np.uint8]: ...
def surface_distance_summary(
    gt: npt.NDArray[np.uint8] | npt.NDArray[np.bool_],
    pred: npt.NDArray[np.uint8] | npt.NDArray[np.bool_],
    spacing_mm: Sequence[float],
    percent: float = 95.0,
    num_threads: int = 0,
) -> dict[str, float | int]: ...
def case_scores(
    gt: npt.NDArray[np.uint8] | npt.NDArray[np.bool_],
    pred: npt.NDArray[np.uint8] | npt.NDArray[np.bool_],
    spacing_mm: Sequence[float],
    tolerances_mm: Sequence[float],
    with_distances: bool,
    percent: float = 95.0,
    num_threads: int = 0,
) -> dict[str, Any]: ...
