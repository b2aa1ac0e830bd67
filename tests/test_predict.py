"""Volume prediction: equal to the reference one-slice loop, independent of batch size, padding, bad input."""
import numpy as np
import pytest
import torch

from fewshot_da.errors import InputError
from fewshot_da.models import UNet2dDart20, UNet2dVanilla
from fewshot_da.predict import _pad_widths, predict_volume, predict_volume_reference



@pytest.fixture(scope="module")
def model():
    """A small DART20-layout net whose BatchNorms saw data, so the masks are neither empty nor full."""
    torch.manual_seed(1)
    net = UNet2dDart20(n_filters=4)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(4, 1, 24, 24) * 2 + 0.5)
        net.out_path[2].weight.mul_(5.0)  # spread the logits: few probabilities sit near 0.5
    return net.eval()


@pytest.fixture(scope="module")
def volume():
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(7, 30, 37)).astype(np.float32)
    vol[:, 8:22, 10:28] += 2.0  # a bright block, so slices differ in min and content
    vol[3] -= 5.0
    return vol


def test_pad_widths_split_half_before_half_after():
    assert _pad_widths(37, 8) == (1, 2)
    assert _pad_widths(30, 8) == (1, 1)
    assert _pad_widths(32, 8) == (0, 0)
    assert _pad_widths(270, 16) == (1, 1)


def test_equals_reference_loop(model, volume):
    ref_mask, ref_probs = predict_volume_reference(model, volume, pad_multiple=8, return_probs=True)
    assert 0.05 < ref_mask.mean() < 0.95
    for channels_last in (False, True):
        mask, probs = predict_volume(model, volume, pad_multiple=8, return_probs=True, channels_last=channels_last)
        assert mask.dtype == np.uint8 and mask.shape == volume.shape
        np.testing.assert_array_equal(mask, ref_mask)
        np.testing.assert_allclose(probs, ref_probs, atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 3, 7, 32])
def test_independent_of_batch_size(model, volume, batch_size):
    base = predict_volume(model, volume, pad_multiple=8, batch_size=2)
    np.testing.assert_array_equal(predict_volume(model, volume, pad_multiple=8, batch_size=batch_size), base)


def test_float16_memmap_input_and_model_state_restored(model, volume, tmp_path):
    path = tmp_path / "vol.npy"
    np.save(path, volume.astype(np.float16))
    memmap = np.load(path, mmap_mode="r")
    model.train()
    mask = predict_volume(model, memmap, pad_multiple=8, batch_size=4)
    assert model.training
    assert all(p.is_contiguous() for p in model.parameters())
    model.eval()
    np.testing.assert_array_equal(mask, predict_volume_reference(model, memmap.astype(np.float32),
                                                                 pad_multiple=8))


def test_vanilla_needs_multiple_of_16():
    torch.manual_seed(0)
    net = UNet2dVanilla(n_filters=2).eval()
    vol = np.random.default_rng(1).normal(size=(2, 20, 19)).astype(np.float32)
    np.testing.assert_array_equal(predict_volume(net, vol, pad_multiple=16),
                                  predict_volume_reference(net, vol, pad_multiple=16))


@pytest.mark.parametrize("bad", [np.zeros((4, 4)), np.zeros((0, 8, 8)), np.zeros((1, 1, 8, 8))])
def test_bad_input_is_one_line_error(model, bad):
    with pytest.raises(InputError, match=r"\(S, H, W\) array"):
        predict_volume(model, bad, pad_multiple=8)
    with pytest.raises(InputError, match="batch_size"):
        predict_volume(model, np.zeros((2, 8, 8), np.float32), pad_multiple=8, batch_size=0)
