"""The CUDA surface-Dice kernel against the CPU core (needs the _cuda extension and a GPU)."""

import numpy as np
import pytest
from scipy import ndimage

from fewshot_da import _backend
from fewshot_da.metrics import surface_dice_cuda, surface_dice_many

pytestmark = pytest.mark.skipif(
    not _backend.HAS_CUDA_KERNEL, reason="built without the CUDA extension (no nvcc, or FEWSHOT_DA_CUDA=0)"
)


def _gpu_count():
    return _backend.cuda.device_count() if _backend.HAS_CUDA_KERNEL else 0


needs_gpu = pytest.mark.skipif(_gpu_count() == 0, reason="no CUDA device on this machine")


def test_extension_imports_without_gpu():
    assert isinstance(_backend.cuda.device_count(), int)


def test_rejects_host_arrays_and_bad_arguments():
    host = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="CUDA tensor or expose __cuda_array_interface__"):
        surface_dice_cuda(host, host, spacing_mm=(1, 1, 1), tolerance_mm=1)
    with pytest.raises(ValueError, match="positive"):
        _backend.cuda.surface_dice_areas(1, 1, [4, 4, 4], [1.0, 0.0, 1.0], [1.0])
    if _gpu_count() == 0:
        # without a GPU the kernel refuses to start instead of dereferencing the pointers
        with pytest.raises(RuntimeError, match="CUDA"):
            _backend.cuda.surface_dice_areas(host.ctypes.data, host.ctypes.data, [4, 4, 4], [1.0] * 3, [1.0])


def _to_device(array):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA support here, so there is no way to allocate device buffers")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.uint8)).cuda()


@needs_gpu
@pytest.mark.parametrize(
    "shape, spacing",
    [((40, 48, 36), (1.0, 1.0, 1.0)), ((30, 50, 44), (0.9375, 0.9375, 1.2)), ((64, 80), (2.0, 1.0))],
)
def test_gpu_matches_cpu(shape, spacing):
    rng = np.random.default_rng(0)
    gt = ndimage.binary_dilation(rng.random(shape) < 0.01, iterations=3)
    pred = ndimage.binary_dilation(rng.random(shape) < 0.01, iterations=3)
    gt[0] = True  # touches the border
    gt_d, pred_d = _to_device(gt), _to_device(pred)
    for tolerance in (0.0, 1.0, 2.0, 3.5):
        cpu = surface_dice_many(gt, pred, spacing_mm=spacing, tolerances_mm=[tolerance])[0]
        gpu = surface_dice_cuda(gt_d, pred_d, spacing_mm=spacing, tolerance_mm=tolerance)
        assert gpu == cpu  # same integer surfel counts, same summation order


@needs_gpu
def test_gpu_empty_masks():
    empty = _to_device(np.zeros((8, 8, 8), bool))
    full = np.zeros((8, 8, 8), bool)
    full[2:5, 2:5, 2:5] = True
    assert np.isnan(surface_dice_cuda(empty, empty, spacing_mm=(1, 1, 1), tolerance_mm=1))
    assert surface_dice_cuda(_to_device(full), empty, spacing_mm=(1, 1, 1), tolerance_mm=1) == 0.0
