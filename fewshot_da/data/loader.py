"""Random 2D training batches from slice-major volumes: C++ batch assembly with background prefetch."""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from fewshot_da._backend import core
from fewshot_da.data.augment import AugmentOptions, augment_options
from fewshot_da.errors import InputError

_RING = 3  # buffers in the ring: the batch of call n is overwritten from call n + 2 on


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _check_volumes(images, masks, slices):
    """One-line InputErrors for anything the C++ side would reject; returns the int64 slice lists."""
    if not isinstance(images, (list, tuple)) or not isinstance(masks, (list, tuple)):
        raise InputError("SliceLoader: images and masks must be lists of arrays")
    if len(images) == 0:
        raise InputError("SliceLoader: no volumes given")
    if len(masks) != len(images):
        raise InputError(f"SliceLoader: {len(images)} images but {len(masks)} masks")
    if slices is not None and len(slices) != len(images):
        raise InputError(f"SliceLoader: {len(images)} images but {len(slices)} slice lists")
    lists = []
    for k, (image, mask) in enumerate(zip(images, masks)):
        if not isinstance(image, np.ndarray) or not isinstance(mask, np.ndarray):
            raise InputError(f"SliceLoader: images[{k}] and masks[{k}] must be NumPy arrays (memmaps ok)")
        if image.dtype not in (np.float32, np.float16):
            raise InputError(f"SliceLoader: images[{k}] has dtype {image.dtype}, expected float32 or float16")
        if mask.dtype not in (np.uint8, np.bool_):
            raise InputError(f"SliceLoader: masks[{k}] has dtype {mask.dtype}, expected uint8 (or bool)")
        if image.ndim != 3 or 0 in image.shape:
            raise InputError(f"SliceLoader: images[{k}] has shape {image.shape}, "
                             "expected non-empty (S, H, W)")
        if mask.shape != image.shape:
            raise InputError(f"SliceLoader: masks[{k}] has shape {mask.shape} "
                             f"but images[{k}] has {image.shape}")
        if not (image.flags.c_contiguous and mask.flags.c_contiguous):
            raise InputError(f"SliceLoader: images[{k}] / masks[{k}] must be C-contiguous "
                             "(np.ascontiguousarray)")
        allowed = None if slices is None else slices[k]
        if allowed is None:
            allowed = np.arange(image.shape[0], dtype=np.int64)
        else:
            allowed = np.asarray(allowed)
            if allowed.ndim != 1 or allowed.size == 0:
                raise InputError(f"SliceLoader: slices[{k}] must be a non-empty 1D list of slice indices")
            if allowed.dtype.kind not in "iu":
                raise InputError(f"SliceLoader: slices[{k}] has dtype {allowed.dtype}, expected integers")
            bad = allowed[(allowed < 0) | (allowed >= image.shape[0])]
            if bad.size:
                raise InputError(f"SliceLoader: slices[{k}] has index {int(bad[0])} out of range for "
                                 f"{image.shape[0]} slices")
            allowed = np.ascontiguousarray(allowed, dtype=np.int64)
        lists.append(allowed)
    return lists


def _name_volume(message: str, ids) -> str:
    """'volume k: ...' from the C++ side as 'masks[k] (id ...): ...'."""
    head, sep, rest = message.partition(": ")
    if sep and head.startswith("volume ") and head[7:].isdigit():
        k = int(head[7:])
        name = f"masks[{k}]" + (f" (id {ids[k]!r})" if ids is not None else "")
        return f"{name}: {rest}"
    return message


def _check_step(step, method: str) -> int:
    if not isinstance(step, (int, np.integer)) or not 0 <= step < 2**64:
        raise InputError(f"SliceLoader.{method}: step must be an int in [0, 2**64), got {step!r}")
    return int(step)


def _crop_pair(crop) -> tuple:
    pair = (crop, crop) if isinstance(crop, (int, np.integer)) else tuple(crop)
    if len(pair) != 2 or not all(isinstance(c, (int, np.integer)) and c >= 1 for c in pair):
        raise InputError(f"SliceLoader: crop must be a positive int or (height, width), got {crop!r}")
    return int(pair[0]), int(pair[1])


class SliceLoader:
    """Endless stream of (image, mask) batches of random 2D crops, identical for a given (seed, step).

    Rule for item i of step t (its own splitmix64 engine seeded from (seed, t, i), see csrc/slice_loader.h,
    so batches do not depend on `num_threads` or on prefetching):
      1. a volume uniformly at random;
      2. a slice uniformly from that volume's allowed list (`slices[k]`, e.g. the 1/k comb; duplicates
         weigh more; None = all slices);
      3. a `crop` = (ch, cw) window: when the slice is at least ch x cw, its top-left corner is uniform over
         all fitting positions; otherwise (REFERENCE.md §4, dpipe) it is centred in BOTH dims,
         start = size // 2 - crop // 2, and pixels outside the slice are the slice minimum (image) and
         0 (mask).
    Same distribution as the reference (dpipe: RandomState for the scan, global np.random for the slice),
    not the same random stream: that one depends on thread timing and cannot be reproduced.
    augment: AugmentOptions (or a preset name / dict, see data.augment.augment_options), None or mode
    "none" for no augmentation (the batches above, unchanged). Otherwise each item then draws its
    augmentation from the same engine and the C++ pass warps the crop window (rotation, quarter turns,
    zoom, shear, flips, translation about the crop centre; bilinear; outside the slice: its minimum for
    the image, 0 for the mask) and applies the intensity transforms; masks are interpolated bilinearly
    and thresholded at 0.5 (>= 0.5 -> 1). See csrc/augment.h for the exact formulas and
    augment_params(step) for the drawn values; loader_reference.reference_batch reproduces it in SciPy.
    Masks must hold only 0 and 1 (InputError otherwise); `ids` (one name per volume) names the offender.
    fg_fraction: the last round(fg_fraction * batch_size) items of every batch (Python round, half to even)
    draw their volume among the volumes with an allowed foreground slice and their slice among those
    (foreground = any nonzero mask pixel in the whole slice; the crop may still miss it). Default 0.0, as
    in the reference.

    images: list of (S, H, W) float32 or float16 C-contiguous arrays (memmaps ok; references are kept, so
    they stay mapped while the loader lives); masks: (S, H, W) uint8 (or bool). Output: float32 torch
    tensors (B, 1, ch, cw); float16 images are converted exactly, masks keep their values (0/1).

    Buffers are reused (zero-copy views of a ring of 3 preallocated buffers, pinned when CUDA is
    available): the tensors returned by a call stay valid during the next call and are overwritten from
    the call after it on (next-but-one). So `x.to("cuda", non_blocking=True)` of batch n may still be in
    flight while batch n + 1 is fetched, as long as it completes before call n + 2 (any synchronising op
    in step n + 1, such as `loss.item()`, ensures it); `.clone()` what you keep longer.
    With `prefetch`, a background thread fills step t + 1 (C++ with the GIL released, `num_threads`
    threads, default: all usable cores) while step t is used.
    """

    def __init__(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                 slices: Sequence[Sequence[int] | None] | None = None, *, batch_size: int = 32,
                 crop=(256, 256), seed: int = 0, num_threads: int | None = None, prefetch: bool = True,
                 fg_fraction: float = 0.0, pin_memory: bool | None = None,
                 augment: AugmentOptions | None = None, ids: Sequence[str] | None = None):
        lists = _check_volumes(images, masks, slices)
        if ids is not None and len(ids) != len(images):
            raise InputError(f"SliceLoader: {len(images)} images but {len(ids)} ids")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InputError(f"SliceLoader: batch_size must be a positive int, got {batch_size!r}")
        ch, cw = _crop_pair(crop)
        if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
            raise InputError(f"SliceLoader: seed must be an int in [0, 2**64), got {seed!r}")
        if num_threads is not None and (not isinstance(num_threads, (int, np.integer)) or num_threads < 1):
            raise InputError(f"SliceLoader: num_threads must be a positive int or None, got {num_threads!r}")
        if not 0.0 <= float(fg_fraction) <= 1.0:
            raise InputError(f"SliceLoader: fg_fraction must lie in [0, 1], got {fg_fraction!r}")
        self.batch_size, self.crop, self.seed = int(batch_size), (ch, cw), int(seed)
        self.num_threads = int(num_threads) if num_threads is not None else _default_threads()
        self.fg_fraction = float(fg_fraction)
        self.n_fg_items = round(self.fg_fraction * self.batch_size)
        options = augment_options(augment)
        self.augment = options if options.enabled else None
        spec = self.augment.core_spec((ch, cw)) if self.augment is not None else None
        masks = [m.view(np.uint8) if m.dtype == np.bool_ else m for m in masks]
        try:
            self._batcher = core.SliceBatcher(list(images), list(masks), lists, self.batch_size, ch, cw,
                                              self.seed, self.n_fg_items, self.num_threads, spec)
        except ValueError as exc:
            raise InputError(f"SliceLoader: {_name_volume(str(exc), ids)}") from None
        self.slices = lists
        pin = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        shape = (self.batch_size, 1, ch, cw)
        self._ring = []
        for _ in range(_RING):
            x = torch.empty(shape, dtype=torch.float32, pin_memory=pin)
            y = torch.empty(shape, dtype=torch.float32, pin_memory=pin)
            self._ring.append((x, y, x.numpy(), y.numpy()))
        self._calls = 0
        self._next_step = 0
        self._pending = None  # (step, future) filling ring slot self._calls % _RING
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="slice-prefetch") if prefetch else None

    def _fill(self, step: int, slot: int) -> None:
        _, _, x, y = self._ring[slot]
        self._batcher.fill(step, x, y, self.num_threads)

    def _launch(self, step: int) -> None:
        if self._executor is not None and self._pending is None:
            _, _, x, y = self._ring[self._calls % _RING]
            # the task holds the batcher and buffers, never `self`, so `self` is never freed on that thread
            future = self._executor.submit(self._batcher.fill, step, x, y, self.num_threads)
            self._pending = (step, future)

    def batch(self, step: int):
        """(x, y) float32 tensors (B, 1, ch, cw) of step `step`; valid until the next-but-one call."""
        step = _check_step(step, "batch")
        slot = self._calls % _RING
        pending, self._pending = self._pending, None
        if pending is not None:
            pending[1].result()  # finish (or surface the error of) the fill of this slot before reusing it
        if pending is None or pending[0] != step:
            self._fill(step, slot)
        self._calls += 1
        self._next_step = step + 1
        self._launch(step + 1)
        x, y, _, _ = self._ring[slot]
        return x, y

    def start(self, step: int) -> SliceLoader:
        """Make iteration continue at `step` (resume); prefetches it."""
        self._next_step = _check_step(step, "start")
        if self._pending is not None and self._pending[0] != self._next_step:
            self._pending[1].result()
            self._pending = None
        self._launch(self._next_step)
        return self

    def __iter__(self) -> Iterator:
        """Yields batch(s), batch(s + 1), ... from the current step (0, or the one given to start())."""
        while True:
            yield self.batch(self._next_step)

    def draws(self, step: int):
        """[(volume, slice, y0, x0, centred)] of the items of step `step` (no data is read)."""
        step = _check_step(step, "draws")
        return [tuple(self._batcher.draw(step, i)) for i in range(self.batch_size)]

    def augment_params(self, step: int) -> list:
        """Per item of step `step`, a dict of its draw (volume, slice, y0, x0, centred) and its augmentation
        (angle_deg, rot90, zoom, shear_y, shear_x, flip_y, flip_x, translate_y_px, translate_x_px, the
        2 x 2 `matrix` M, bias, gamma, contrast, brightness, noise_sd, noise_key; identity values for
        transforms not applied, or without augmentation). Recomputed from (seed, step, item); no data read."""
        step = _check_step(step, "augment_params")
        out = []
        for i in range(self.batch_size):
            volume, sl, y0, x0, centred = self._batcher.draw(step, i)
            out.append({"volume": volume, "slice": sl, "y0": y0, "x0": x0, "centred": centred,
                        **self._batcher.augment_params(step, i)})
        return out

    def foreground_slices(self, volume: int) -> np.ndarray:
        """Allowed slices of `volume` with foreground (computed only when fg_fraction > 0)."""
        return np.asarray(self._batcher.foreground_slices(int(volume)), dtype=np.int64)

    def close(self) -> None:
        """Stops the prefetch thread (waits for a fill in flight)."""
        if self._executor is not None:
            if self._pending is not None:
                self._pending[1].result()
                self._pending = None
            self._executor.shutdown(wait=True)
            self._executor = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=False)  # a fill in flight keeps its own references to batcher and buffers
