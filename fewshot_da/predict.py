"""Whole-volume prediction with a 2D U-Net: batched slices, padded with the slice minimum, sigmoid > 0.5."""
import numpy as np
import torch
from torch import nn

from .errors import InputError


def _pad_widths(size: int, multiple: int) -> tuple:
    """(before, after) so that size + before + after is a multiple; the odd pixel goes after (half left/right)."""
    total = (-size) % multiple
    return total // 2, total - total // 2


def pad_slices(chunk: torch.Tensor, multiple: int) -> torch.Tensor:
    """(n, H, W) slices -> (n, H', W') padded to a multiple of `multiple` with each slice's own minimum, centred
    (the odd pixel after), as the reference's inference does."""
    n, height, width = chunk.shape
    (top, bottom), (left, right) = _pad_widths(height, multiple), _pad_widths(width, multiple)
    x = chunk.amin(dim=(1, 2)).view(n, 1, 1).repeat(1, height + top + bottom, width + left + right)
    x[:, top:top + height, left:left + width] = chunk
    return x


def _check_slices(image_slices) -> np.ndarray:
    images = np.asarray(image_slices) if not isinstance(image_slices, np.ndarray) else image_slices
    if images.ndim != 3 or 0 in images.shape:
        raise InputError(f"image slices must be a non-empty (S, H, W) array, got shape {tuple(images.shape)}")
    return images


def _model_device(model: nn.Module, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def default_batch_size(device: torch.device) -> int:
    """Slices per forward pass: 32 on a GPU; 2 on a CPU, where a 256x272 slice's activations already
    overflow the caches and larger batches measured slower (benchmarks/README.md)."""
    return 32 if device.type == "cuda" else 2


def predict_volume(model: nn.Module, image_slices, *, pad_multiple: int, batch_size=None, device=None,
                   return_probs: bool = False, channels_last: bool = True, labels=None):
    """Binary mask (S, H, W) uint8 of a slice-major volume (S, H, W), predicted `batch_size` slices at a time
    (None: `default_batch_size`); with a label set of several labels (`models.labels`), its label map instead
    (argmax of the softmax, or regions in order; return_probs is for the binary case only).

    Each slice is padded to a multiple of `pad_multiple` with its own minimum (split half before / half after),
    run through `model` in eval mode without gradients, passed through a sigmoid, cropped back and thresholded at
    p > 0.5, as the reference's one-slice loop (`predict_volume_reference`) does; the result does not depend on
    `batch_size`. float16 or memmap input is read chunk by chunk as float32. With return_probs=True also returns
    the float32 probabilities. `device` (default: where the model is) receives the model. channels_last runs the convolutions in NHWC layout (oneDNN's fast path on CPU; the
    result differs from NCHW only by float rounding). The model's train/eval mode and memory format are restored.
    """
    images = _check_slices(image_slices)
    if return_probs and labels is not None and not labels.is_binary:
        raise InputError("return_probs applies to a binary label set only")
    device = _model_device(model, device)
    batch_size = default_batch_size(device) if batch_size is None else batch_size
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    n_slices, height, width = images.shape
    top, left = _pad_widths(height, pad_multiple)[0], _pad_widths(width, pad_multiple)[0]
    model.to(device)
    mask = np.empty((n_slices, height, width), dtype=np.uint8)
    probs = np.empty((n_slices, height, width), dtype=np.float32) if return_probs else None
    was_training = model.training
    model.eval()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model.to(memory_format=torch.channels_last)
    try:
        with torch.inference_mode():
            for start in range(0, n_slices, batch_size):
                chunk = torch.from_numpy(np.array(images[start:start + batch_size], dtype=np.float32))
                chunk = chunk.to(device, non_blocking=True)
                n = chunk.shape[0]
                x = pad_slices(chunk, pad_multiple).unsqueeze(1).contiguous(memory_format=layout)
                logits = model(x)
                if labels is not None and not labels.is_binary:
                    logits = logits[0] if isinstance(logits, (list, tuple)) else logits
                    crop = labels.to_mask(logits[:, :, top:top + height, left:left + width])
                    mask[start:start + n] = crop.cpu().numpy()
                    continue
                p = torch.sigmoid(logits)[:, 0, top:top + height, left:left + width]
                mask[start:start + n] = (p > 0.5).to(torch.uint8).cpu().numpy()
                if return_probs:
                    probs[start:start + n] = p.float().cpu().numpy()
    finally:
        model.train(was_training)
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
    return (mask, probs) if return_probs else mask


def predict_volume_reference(model: nn.Module, image_slices, *, pad_multiple: int, device=None,
                             return_probs: bool = False):
    """The reference's loop: one slice at a time (np.pad with the slice minimum, net, sigmoid, crop), then > 0.5.

    Kept as the oracle for `predict_volume` and as the baseline in benchmarks/bench_predict.py.
    """
    images = _check_slices(image_slices)
    device = _model_device(model, device)
    model.to(device)
    was_training = model.training
    model.eval()
    prob_slices = []
    try:
        with torch.no_grad():
            for image in images:
                image = np.asarray(image, dtype=np.float32)
                widths = [_pad_widths(size, pad_multiple) for size in image.shape]
                padded = np.pad(image, widths, mode="constant", constant_values=image.min())
                x = torch.from_numpy(padded[None, None]).to(device)
                p = torch.sigmoid(model(x))[0, 0].cpu().numpy()
                (top, _), (left, _) = widths
                prob_slices.append(p[top:top + image.shape[0], left:left + image.shape[1]])
    finally:
        model.train(was_training)
    probs = np.stack(prob_slices)
    mask = (probs > 0.5).astype(np.uint8)
    return (mask, probs) if return_probs else mask
