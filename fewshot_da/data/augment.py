"""Augmentation options for the slice loader: ranges, probabilities, presets and the resolver.

The transforms run inside the C++ loader (csrc/augment.h), fused with the crop; this module only says what
to draw. Every transform has its own probability and draws its random words whether or not it applies.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from fewshot_da.errors import InputError

MODES = ("none", "spatial", "intensity", "both")

SPATIAL_FIELDS = ("rotation_deg", "rotation_p", "rot90_p", "zoom_range", "zoom_p", "shear", "shear_p",
                  "flip_p", "translate", "translate_unit", "translate_p")
INTENSITY_FIELDS = ("bias_field", "bias_field_p", "gamma_range", "gamma_p", "contrast_range", "contrast_p",
                    "brightness", "brightness_p", "noise_sd_range", "noise_p")


@dataclass(frozen=True)
class AugmentOptions:
    """What the loader draws per item; `mode` picks the groups that run (none|spatial|intensity|both).

    Spatial (about the crop centre; pixels outside the slice read its minimum, masks 0):
      rotation_deg: angle ~ U[-rotation_deg, rotation_deg] degrees, with probability rotation_p;
      rot90_p: probability of k ~ U{1, 2, 3} exact quarter turns;
      zoom_range: zoom ~ U[lo, hi] (> 1 magnifies), with probability zoom_p;
      shear: shear factors ~ U[-shear, shear] on both axes, with probability shear_p;
      flip_p: (rows, columns) flip probabilities, i.e. up-down and left-right;
      translate: shift ~ U[-translate, translate] per axis, in pixels (translate_unit "px") or as a
        fraction of the crop size ("fraction"), with probability translate_p.
    Intensity (image units; applied in this order after the warp):
      bias_field: smooth multiplicative field exp(a0 u + a1 u^2 + a2 w + a3 w^2) over the crop, u, w in
        [-1, 1], a ~ U[-bias_field, bias_field], applied above the slice minimum, with probability
        bias_field_p;
      gamma_range: v -> min + R ((v - min) / R)^gamma over the slice's range R, gamma as nnU-Net (half the
        time below 1 when the range straddles 1), with probability gamma_p;
      contrast_range: v -> mean + (v - mean) * c around the slice mean, with probability contrast_p;
      brightness: v + b, b ~ U[-brightness, brightness], with probability brightness_p;
      noise_sd_range: additive noise, sd ~ U[lo, hi], with probability noise_p; approximately Gaussian (sum
        of four uniforms, variance-matched, bounded at +-3.46 sd).
    Masks: bilinear, then >= 0.5 is foreground (as nnU-Net's linear segmentation resampling).
    """

    mode: str = "both"
    rotation_deg: float = 0.0
    rotation_p: float = 0.0
    rot90_p: float = 0.0
    zoom_range: tuple = (1.0, 1.0)
    zoom_p: float = 0.0
    shear: float = 0.0
    shear_p: float = 0.0
    flip_p: tuple = (0.0, 0.0)
    translate: float = 0.0
    translate_unit: str = "px"
    translate_p: float = 0.0
    bias_field: float = 0.0
    bias_field_p: float = 0.0
    gamma_range: tuple = (1.0, 1.0)
    gamma_p: float = 0.0
    contrast_range: tuple = (1.0, 1.0)
    contrast_p: float = 0.0
    brightness: float = 0.0
    brightness_p: float = 0.0
    noise_sd_range: tuple = (0.0, 0.0)
    noise_p: float = 0.0

    def __post_init__(self):
        if self.mode not in MODES:
            raise InputError(f"augment mode {self.mode!r}: choose from {', '.join(MODES)}")
        if self.translate_unit not in ("px", "fraction"):
            raise InputError(f"augment translate_unit {self.translate_unit!r}: choose px or fraction")
        for name in ("zoom_range", "flip_p", "gamma_range", "contrast_range", "noise_sd_range"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
            pair = getattr(self, name)
            if not (isinstance(pair, tuple) and len(pair) == 2 and all(_is_real(v) for v in pair)):
                raise InputError(f"augment {name}: expected two numbers, got {value!r}")
            object.__setattr__(self, name, (float(pair[0]), float(pair[1])))
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("mode", "translate_unit") or isinstance(value, tuple):
                continue
            if not _is_real(value):
                raise InputError(f"augment {f.name}: expected a finite number, got {value!r}")
            object.__setattr__(self, f.name, float(value))
            if f.name.endswith("_p") and not 0.0 <= value <= 1.0:
                raise InputError(f"augment {f.name}: a probability must lie in [0, 1], got {value!r}")
            if value < 0:
                raise InputError(f"augment {f.name}: must be >= 0, got {value!r}")
        for p in self.flip_p:
            if not 0.0 <= p <= 1.0:
                raise InputError(f"augment flip_p: probabilities must lie in [0, 1], got {self.flip_p!r}")
        for name, strict in (("zoom_range", True), ("gamma_range", True), ("contrast_range", False),
                             ("noise_sd_range", False)):
            lo, hi = getattr(self, name)
            if not ((lo > 0 if strict else lo >= 0) and lo <= hi):
                raise InputError(f"augment {name}: need {'0 <' if strict else '0 <='} lo <= hi, got {(lo, hi)!r}")

    def replace(self, **changes) -> AugmentOptions:
        return replace(self, **changes)

    @property
    def enabled(self) -> bool:
        """True when the loader has anything to draw (mode is not none)."""
        return self.mode != "none"

    def as_dict(self) -> dict:
        """Plain dict (lists for pairs) for config.yaml; augment_options() reads it back."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def core_spec(self, crop) -> dict:
        """Field dict of the C++ AugmentSpec for crop (ch, cw): groups off by `mode` get probability 0."""
        spatial = self.mode in ("spatial", "both")
        intensity = self.mode in ("intensity", "both")
        s = 1.0 if spatial else 0.0
        i = 1.0 if intensity else 0.0
        scale = (crop[0], crop[1]) if self.translate_unit == "fraction" else (1.0, 1.0)
        return {
            "rotation_p": s * self.rotation_p, "rotation_deg": self.rotation_deg, "rot90_p": s * self.rot90_p,
            "zoom_p": s * self.zoom_p, "zoom_min": self.zoom_range[0], "zoom_max": self.zoom_range[1],
            "shear_p": s * self.shear_p, "shear": self.shear,
            "flip_y_p": s * self.flip_p[0], "flip_x_p": s * self.flip_p[1],
            "translate_p": s * self.translate_p, "translate_y_px": self.translate * scale[0],
            "translate_x_px": self.translate * scale[1],
            "bias_p": i * self.bias_field_p, "bias": self.bias_field,
            "gamma_p": i * self.gamma_p, "gamma_min": self.gamma_range[0], "gamma_max": self.gamma_range[1],
            "contrast_p": i * self.contrast_p, "contrast_min": self.contrast_range[0],
            "contrast_max": self.contrast_range[1],
            "brightness_p": i * self.brightness_p, "brightness": self.brightness,
            "noise_p": i * self.noise_p, "noise_sd_min": self.noise_sd_range[0],
            "noise_sd_max": self.noise_sd_range[1],
        }


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


PRESETS = {
    # DART20's optional augm_spatial (REFERENCE.md §4): per axis a flip with p = 0.3, then with p = 0.3 a
    # rot90 by k in {1, 2, 3}. Here the two flips compose (the reference's bug keeps only the last one).
    "dart20-aug": AugmentOptions(mode="spatial", flip_p=(0.3, 0.3), rot90_p=0.3),
    # Ultrasound paper (REFERENCE.md §7): "small random shift, rotation, flip, shear and zoom"; it gives no
    # ranges, so these are ours: +-10 % shift, +-10 degrees, left-right flips only (the probe stays on
    # top), shear +-0.1, zoom 0.9-1.1, each with p = 0.5.
    "ultrasound-aug": AugmentOptions(mode="spatial", translate=0.1, translate_unit="fraction",
                                     translate_p=0.5, rotation_deg=10.0, rotation_p=0.5, flip_p=(0.0, 0.5),
                                     shear=0.1, shear_p=0.5, zoom_range=(0.9, 1.1), zoom_p=0.5),
    # Gamma-style intensity augmentation as nnU-Net's defaults (Isensee et al. 2021; M3DA uses it as its
    # "intensity augmentation" baseline): gamma 0.7-1.5 p 0.3, contrast 0.75-1.25 p 0.15, Gaussian noise
    # variance U(0, 0.1) p 0.1. Brightness is additive here (nnU-Net's is multiplicative), +-0.1 p 0.15.
    "intensity": AugmentOptions(mode="intensity", gamma_range=(0.7, 1.5), gamma_p=0.3,
                                contrast_range=(0.75, 1.25), contrast_p=0.15, brightness=0.1,
                                brightness_p=0.15, noise_sd_range=(0.0, math.sqrt(0.1)), noise_p=0.1),
}


def _combine(names) -> AugmentOptions:
    """Presets joined with '+': each contributes the fields it sets; two setting one field is an error."""
    default = AugmentOptions()
    merged, owner = {}, {}
    modes = set()
    for name in names:
        if name not in PRESETS:
            raise InputError(f"--augment preset {name!r}: choose from {', '.join(PRESETS)} (join with '+')")
        preset = PRESETS[name]
        modes.add(preset.mode)
        for f in fields(preset):
            value = getattr(preset, f.name)
            if f.name == "mode" or value == getattr(default, f.name):
                continue
            if f.name in merged and merged[f.name] != value:
                raise InputError(f"--augment presets {owner[f.name]!r} and {name!r} both set {f.name}")
            merged[f.name], owner[f.name] = value, name
    mode = modes.pop() if len(modes) == 1 else "both"
    return AugmentOptions(mode=mode, **merged)


def augment_options(spec, mode: str | None = None) -> AugmentOptions:
    """AugmentOptions from a preset name (presets join with '+', e.g. "dart20-aug+intensity"), a dict of
    fields (as config.yaml stores it, see AugmentOptions.as_dict), options themselves, or None (no
    augmentation); `mode` (none|spatial|intensity|both), when given, replaces the spec's mode."""
    if mode is not None and mode not in MODES:
        raise InputError(f"--augment {mode!r}: choose from {', '.join(MODES)}")
    if spec is None:
        options = AugmentOptions(mode="none")
    elif isinstance(spec, AugmentOptions):
        options = spec
    elif isinstance(spec, str):
        options = _combine(spec.split("+"))
    elif isinstance(spec, dict):
        known = {f.name for f in fields(AugmentOptions)}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise InputError(f"augment: unknown key {unknown[0]!r}; known: {', '.join(sorted(known))}")
        options = AugmentOptions(**spec)
    else:
        raise InputError(f"augment: expected a preset name, a dict or AugmentOptions, got {type(spec).__name__}")
    return options.replace(mode=mode) if mode is not None else options
