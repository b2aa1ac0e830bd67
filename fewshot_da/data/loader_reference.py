"""Pure-NumPy oracle of the slice loader's sampling rule (slow; for tests and for reading the rule)."""
from __future__ import annotations

import numpy as np

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def splitmix64_mix(z: int) -> int:
    """splitmix64 finaliser on a 64-bit word (Steele, Lea & Flood 2014)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


class ItemRng:
    """Engine of item `item` of step `step`: a splitmix64 stream started from a hash of (seed, step, item)."""

    def __init__(self, seed: int, step: int, item: int):
        s = splitmix64_mix((seed + GOLDEN) & MASK64)
        s = splitmix64_mix((s + step + GOLDEN) & MASK64)
        self.state = splitmix64_mix((s + item + GOLDEN) & MASK64)

    def next(self) -> int:
        self.state = (self.state + GOLDEN) & MASK64
        return splitmix64_mix(self.state)

    def below(self, n: int) -> int:
        """Uniform integer in [0, n): reject the low 2**64 mod n outputs, then take the remainder."""
        threshold = (1 << 64) % n
        while True:
            r = self.next()
            if r >= threshold:
                return r % n


def draw_item(shapes, slices, fg_slices, *, seed, step, item, batch_size, crop, n_fg_items):
    """(volume, slice, y0, x0, centred) of one item; fg_slices[k] = allowed slices of k with foreground."""
    rng = ItemRng(seed, step, item)
    if item >= batch_size - n_fg_items:
        candidates = [k for k in range(len(shapes)) if len(fg_slices[k])]
        volume = candidates[rng.below(len(candidates))]
        allowed = fg_slices[volume]
    else:
        volume = rng.below(len(shapes))
        allowed = slices[volume]
    sl = int(allowed[rng.below(len(allowed))])
    _, height, width = shapes[volume]
    ch, cw = crop
    if height >= ch and width >= cw:
        y0 = rng.below(height - ch + 1)
        x0 = rng.below(width - cw + 1)
        return volume, sl, y0, x0, False
    # dpipe get_centered_box(shape // 2, crop): start = shape // 2 - crop // 2 in both dims
    return volume, sl, height // 2 - ch // 2, width // 2 - cw // 2, True


def crop_or_pad(image2d: np.ndarray, y0: int, x0: int, crop, fill) -> np.ndarray:
    """Window [y0, y0 + ch) x [x0, x0 + cw) of `image2d`; positions outside the slice take `fill`."""
    ch, cw = crop
    height, width = image2d.shape
    out = np.full((ch, cw), fill, dtype=image2d.dtype)
    ys, ye = max(0, y0), min(height, y0 + ch)
    xs, xe = max(0, x0), min(width, x0 + cw)
    if ys < ye and xs < xe:
        out[ys - y0:ye - y0, xs - x0:xe - x0] = image2d[ys:ye, xs:xe]
    return out


def foreground_slices(masks, slices):
    """Per volume, the allowed slices (in list order) whose mask has a nonzero pixel."""
    return [np.asarray([s for s in sl if masks[k][s].any()], dtype=np.int64) for k, sl in enumerate(slices)]


def reference_batch(images, masks, slices=None, *, step, batch_size=32, crop=(256, 256), seed=0,
                    fg_fraction=0.0):
    """Batch `step` as float32 arrays (B, 1, ch, cw), computed item by item in NumPy and Python ints."""
    slices = [np.arange(im.shape[0]) if slices is None or slices[k] is None else np.asarray(slices[k])
              for k, im in enumerate(images)]
    n_fg_items = int(round(fg_fraction * batch_size))
    fg = foreground_slices(masks, slices) if n_fg_items else [[] for _ in images]
    shapes = [im.shape for im in images]
    x = np.empty((batch_size, 1) + tuple(crop), np.float32)
    y = np.empty((batch_size, 1) + tuple(crop), np.float32)
    for i in range(batch_size):
        volume, sl, y0, x0, _ = draw_item(shapes, slices, fg, seed=seed, step=step, item=i,
                                          batch_size=batch_size, crop=crop, n_fg_items=n_fg_items)
        image = np.asarray(images[volume][sl]).astype(np.float32)
        x[i, 0] = crop_or_pad(image, y0, x0, crop, image.min())
        y[i, 0] = crop_or_pad(np.asarray(masks[volume][sl]).astype(np.float32), y0, x0, crop, 0.0)
    return x, y
