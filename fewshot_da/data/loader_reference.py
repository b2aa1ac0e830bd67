"""Pure-NumPy oracle of the slice loader's sampling rule and augmentation (slow; for tests and for reading
the rule). The augmentation part uses scipy.ndimage.affine_transform."""
from __future__ import annotations

import math

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
    return _draw_from(ItemRng(seed, step, item), shapes, slices, fg_slices, item=item, batch_size=batch_size,
                      crop=crop, n_fg_items=n_fg_items)


def _draw_from(rng, shapes, slices, fg_slices, *, item, batch_size, crop, n_fg_items):
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
    n_fg_items = round(fg_fraction * batch_size)
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


# ---- augmentation (csrc/augment.h), drawn from the item's engine after its crop ----

def _uniform01(rng: ItemRng) -> float:
    return (rng.next() >> 11) * 2.0 ** -53


def _uniform(rng: ItemRng, lo: float, hi: float) -> float:
    return lo + (hi - lo) * _uniform01(rng)


def _matmul2(a, b):
    return (a[0] * b[0] + a[1] * b[2], a[0] * b[1] + a[1] * b[3],
            a[2] * b[0] + a[3] * b[2], a[2] * b[1] + a[3] * b[3])


_QUARTER = ((1.0, 0.0, 0.0, 1.0), (0.0, -1.0, 1.0, 0.0), (-1.0, 0.0, 0.0, -1.0), (0.0, 1.0, -1.0, 0.0))


def draw_augment(rng: ItemRng, s: dict) -> dict:
    """One item's augmentation parameters from `rng` and the AugmentSpec field dict `s`, in the C++ word
    order (27 words; every transform draws its words whether or not it applies)."""
    a = {"angle_deg": 0.0, "rot90": 0, "zoom": 1.0, "shear_y": 0.0, "shear_x": 0.0, "flip_y": False,
         "flip_x": False, "translate_y_px": 0.0, "translate_x_px": 0.0, "bias": (0.0, 0.0, 0.0, 0.0),
         "gamma": 1.0, "contrast": 1.0, "brightness": 0.0, "noise_sd": 0.0, "noise_key": 0}
    on = _uniform01(rng) < s["rotation_p"]
    u = _uniform(rng, -s["rotation_deg"], s["rotation_deg"])
    if on:
        a["angle_deg"] = u
    on = _uniform01(rng) < s["rot90_p"]
    k = 1 + int(_uniform01(rng) * 3.0)
    if on:
        a["rot90"] = k
    on = _uniform01(rng) < s["zoom_p"]
    u = _uniform(rng, s["zoom_min"], s["zoom_max"])
    if on:
        a["zoom"] = u
    on = _uniform01(rng) < s["shear_p"]
    sy, sx = _uniform(rng, -s["shear"], s["shear"]), _uniform(rng, -s["shear"], s["shear"])
    if on:
        a["shear_y"], a["shear_x"] = sy, sx
    a["flip_y"] = _uniform01(rng) < s["flip_y_p"]
    a["flip_x"] = _uniform01(rng) < s["flip_x_p"]
    on = _uniform01(rng) < s["translate_p"]
    ty = _uniform(rng, -s["translate_y_px"], s["translate_y_px"])
    tx = _uniform(rng, -s["translate_x_px"], s["translate_x_px"])
    if on:
        a["translate_y_px"], a["translate_x_px"] = ty, tx
    on = _uniform01(rng) < s["bias_p"]
    bias = tuple(_uniform(rng, -s["bias"], s["bias"]) for _ in range(4))
    if on:
        a["bias"] = bias
    on = _uniform01(rng) < s["gamma_p"]
    below = _uniform01(rng) < 0.5
    u = _uniform01(rng)
    if on:
        lo, hi = s["gamma_min"], s["gamma_max"]
        if lo < 1 < hi:
            a["gamma"] = lo + (1 - lo) * u if below else 1 + (hi - 1) * u
        else:
            a["gamma"] = lo + (hi - lo) * u
    on = _uniform01(rng) < s["contrast_p"]
    u = _uniform(rng, s["contrast_min"], s["contrast_max"])
    if on:
        a["contrast"] = u
    on = _uniform01(rng) < s["brightness_p"]
    u = _uniform(rng, -s["brightness"], s["brightness"])
    if on:
        a["brightness"] = u
    on = _uniform01(rng) < s["noise_p"]
    u = _uniform(rng, s["noise_sd_min"], s["noise_sd_max"])
    key = rng.next()
    if on:
        a["noise_sd"], a["noise_key"] = u, key
    theta = a["angle_deg"] * math.pi / 180.0
    c, sn = math.cos(theta), math.sin(theta)
    m = _matmul2((c, -sn, sn, c), _QUARTER[a["rot90"]])
    m = _matmul2(m, (1.0, a["shear_y"], a["shear_x"], 1.0))
    m = _matmul2(m, (-1.0 if a["flip_y"] else 1.0, 0.0, 0.0, -1.0 if a["flip_x"] else 1.0))
    inv_zoom = 1.0 / a["zoom"]
    a["matrix"] = ((m[0] * inv_zoom, m[1] * inv_zoom), (m[2] * inv_zoom, m[3] * inv_zoom))
    return a


NOISE_SCALE = np.float32(2.6428997921303014e-05)  # 1 / sqrt(4 (65536^2 - 1) / 12) as float32


def noise_z(key: int, n: int) -> np.ndarray:
    """The n noise values of a crop (row-major) from its key: Irwin-Hall(4) over 16-bit fields, unit sd."""
    with np.errstate(over="ignore"):
        state = np.uint64(key) + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(GOLDEN)
        z = state
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        w = z ^ (z >> np.uint64(31))
    m16 = np.uint64(0xFFFF)
    total = ((w & m16) + ((w >> np.uint64(16)) & m16) + ((w >> np.uint64(32)) & m16) + (w >> np.uint64(48)))
    return (total.astype(np.int64) - 131070).astype(np.float32) * NOISE_SCALE


def augment_item(image2d: np.ndarray, mask2d: np.ndarray, y0: int, x0: int, crop, a: dict):
    """(image, mask) float64 crops of one item with augmentation `a` (draw_augment's dict), with SciPy:
    affine_transform order 1, mode 'grid-constant' (outside: slice minimum / 0), mask >= 0.5; then the
    intensity transforms of csrc/augment.h in float64."""
    from scipy.ndimage import affine_transform

    ch, cw = crop
    image = np.asarray(image2d).astype(np.float64)
    lo = float(np.asarray(image2d).astype(np.float32).min())
    hy, hx = (ch - 1) / 2.0, (cw - 1) / 2.0
    matrix = np.asarray(a["matrix"], dtype=np.float64)
    centre = np.array([y0 + hy + a["translate_y_px"], x0 + hx + a["translate_x_px"]])
    if matrix.tolist() != [[1.0, 0.0], [0.0, 1.0]] or a["translate_y_px"] or a["translate_x_px"]:
        offset = centre - matrix @ np.array([hy, hx])
        x = affine_transform(image, matrix, offset, output_shape=(ch, cw), order=1, mode="grid-constant",
                             cval=lo, prefilter=False)
        m = affine_transform(np.asarray(mask2d).astype(np.float64), matrix, offset, output_shape=(ch, cw),
                             order=1, mode="grid-constant", cval=0.0, prefilter=False)
        y = (m >= 0.5).astype(np.float64)
    else:
        x = crop_or_pad(image, y0, x0, crop, lo)
        y = crop_or_pad(np.asarray(mask2d).astype(np.float64), y0, x0, crop, 0.0)
    if any(a["bias"]):
        u = (np.arange(cw) - hx) / hx if hx > 0 else np.zeros(cw)
        w = (np.arange(ch) - hy) / hy if hy > 0 else np.zeros(ch)
        b = a["bias"]
        field = np.exp(b[2] * w + b[3] * w * w)[:, None] * np.exp(b[0] * u + b[1] * u * u)[None, :]
        x = lo + (x - lo) * field
    if a["gamma"] != 1.0:
        r = float(np.asarray(image2d).astype(np.float32).max()) - lo
        if r > 0:
            x = lo + r * np.maximum((x - lo) / r, 0.0) ** a["gamma"]
    if a["contrast"] != 1.0:
        mean = image.mean()
        x = mean + (x - mean) * a["contrast"]
    x = x + a["brightness"]
    if a["noise_sd"] != 0.0:
        x = x + a["noise_sd"] * noise_z(a["noise_key"], ch * cw).astype(np.float64).reshape(ch, cw)
    return x, y


def reference_augmented_batch(images, masks, slices=None, *, step, spec, batch_size=32, crop=(256, 256),
                              seed=0, fg_fraction=0.0):
    """Batch `step` with augmentation (AugmentSpec field dict `spec`, e.g. AugmentOptions.core_spec(crop)):
    float32 (B, 1, ch, cw) arrays plus the per-item parameter dicts, item by item in Python and SciPy."""
    slices = [np.arange(im.shape[0]) if slices is None or slices[k] is None else np.asarray(slices[k])
              for k, im in enumerate(images)]
    n_fg_items = round(fg_fraction * batch_size)
    fg = foreground_slices(masks, slices) if n_fg_items else [[] for _ in images]
    shapes = [im.shape for im in images]
    x = np.empty((batch_size, 1) + tuple(crop), np.float32)
    y = np.empty((batch_size, 1) + tuple(crop), np.float32)
    params = []
    for i in range(batch_size):
        rng = ItemRng(seed, step, i)
        volume, sl, y0, x0, centred = _draw_from(rng, shapes, slices, fg, item=i, batch_size=batch_size,
                                                 crop=crop, n_fg_items=n_fg_items)
        a = draw_augment(rng, spec)
        xi, yi = augment_item(images[volume][sl], masks[volume][sl], y0, x0, crop, a)
        x[i, 0], y[i, 0] = xi, yi
        params.append({"volume": volume, "slice": sl, "y0": y0, "x0": x0, "centred": centred, **a})
    return x, y, params
