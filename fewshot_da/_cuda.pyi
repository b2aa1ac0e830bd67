"""Type stub for the optional CUDA extension; the documented API is fewshot_da.metrics.surface_dice_cuda."""
from typing import Sequence

import numpy as np
import numpy.typing as npt

def surface_dice_areas(
    gt_ptr: int, pred_ptr: int, shape: Sequence[int], spacing_mm: Sequence[float], tolerances_mm: Sequence[float]
) -> npt.NDArray[np.float64]: ...
def device_count() -> int: ...
