"""Training configuration: a frozen dataclass, named presets (paper, dart20-code, dsa-code) and YAML round trip."""
import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from ..atomic import write_text_atomic
from ..errors import InputError
from ..models import check_arch
from .layers import check_bn_stats

STAGES = ("source", "finetune")
LOSSES = ("bce", "dice", "bce+dice")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a `fit` run depends on. `lr_steps` maps a 0-based epoch E to a factor applied AFTER epoch E (dpipe
    `Schedule`): {80: 0.1} trains epochs 0-80 at `lr` and 81.. at 0.1*lr. A drop must fire: 0 <= E <= epochs - 2."""

    arch: str = "dart20"
    stage: str = "source"
    preset: str = "paper"
    lr: float = 1e-2
    lr_steps: dict = field(default_factory=lambda: {80: 0.1})
    epochs: int = 100
    iters_per_epoch: int = 100
    batch_size: int = 32
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    bn_stats: str = "update"
    crop: int = 256
    loss: str = "bce"
    # {regex on parameter names: lr factor}, applied on top of the strategy's groups (first match wins)
    lr_scale: dict = field(default_factory=dict)
    base_filters: int = 0  # 0: the architecture's published width
    # the slice loader's augmentation (data.augment.AugmentOptions as a dict); {} = none, as the papers
    augment: dict = field(default_factory=dict)

    def __post_init__(self):
        check_arch(self.arch)
        check_bn_stats(self.bn_stats)
        if self.stage not in STAGES:
            raise InputError(f"stage {self.stage!r} is not valid; valid: {', '.join(STAGES)}")
        try:
            steps = {int(k): float(v) for k, v in dict(self.lr_steps or {}).items()}
        except (TypeError, ValueError):
            raise InputError(f"lr_steps must map epoch -> factor, got {self.lr_steps!r}") from None
        object.__setattr__(self, "lr_steps", dict(sorted(steps.items())))
        for name in ("epochs", "iters_per_epoch", "batch_size", "crop"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise InputError(f"lr must be > 0, got {self.lr}")
        if self.loss not in LOSSES:
            raise InputError(f"--loss {self.loss!r} is not valid; valid: {', '.join(LOSSES)}")
        check_lr_steps(self.lr_steps, int(self.epochs))
        try:
            scales = {str(k): float(v) for k, v in dict(self.lr_scale or {}).items()}
            for pattern in scales:
                re.compile(pattern)
        except (TypeError, ValueError, re.error):
            raise InputError(f"--lr-scale must be PATTERN=FACTOR with a valid regex, got {self.lr_scale!r}") from None
        object.__setattr__(self, "lr_scale", scales)
        object.__setattr__(self, "augment", resolve_augment(self.augment))

    @property
    def total_steps(self) -> int:
        return self.epochs * self.iters_per_epoch

    def resolved(self) -> dict:
        """Plain dict of every field (what config.yaml holds)."""
        return {f.name: (dict(getattr(self, f.name)) if isinstance(getattr(self, f.name), dict)
                         else getattr(self, f.name)) for f in fields(self)}

    def replace(self, **changes) -> "TrainConfig":
        return with_overrides(self, changes)


DEFAULT_AUGMENT_PRESET = "dart20-aug+intensity"


def resolve_augment(value) -> dict:
    """config.augment as stored: {} for none, else the full AugmentOptions dict. Accepts a mode (none, spatial,
    intensity, both: the default preset's groups), a preset spec ("ultrasound-aug+intensity"), {"preset", "mode"}
    (the CLI's --augment-preset / --augment) or a dict of AugmentOptions fields (config YAML)."""
    from ..data.augment import MODES, augment_options

    if not value:
        return {}
    if isinstance(value, str):
        value = {"mode": value} if value in MODES else {"preset": value}
    if isinstance(value, dict) and set(value) <= {"preset", "mode"}:
        options = augment_options(value.get("preset") or DEFAULT_AUGMENT_PRESET, mode=value.get("mode"))
    else:
        options = augment_options(value)
    return {} if options.mode == "none" else options.as_dict()


def check_lr_steps(lr_steps: dict, epochs: int) -> None:
    """One-line InputError for a drop that cannot fire: a drop after 0-based epoch E needs 0 <= E <= epochs - 2."""
    for epoch, factor in lr_steps.items():
        if 0 <= epoch <= epochs - 2:
            continue
        if epoch < 0:
            raise InputError(f"--lr-steps {epoch}:{factor:g}: epochs are 0-based; give an epoch from 0 to "
                             f"{max(0, epochs - 2)}")
        if epochs < 2:
            raise InputError(f"--lr-steps {epoch}:{factor:g}: with --epochs {epochs} no drop can fire (it applies "
                             f"after an epoch, from the next on); give --lr-steps '' or more epochs")
        raise InputError(f"--lr-steps {epoch}:{factor:g}: a drop after epoch {epoch} never fires with --epochs "
                         f"{epochs} (epochs 0..{epochs - 1}; it applies from the next epoch on); give an epoch from "
                         f"0 to {epochs - 2}")


def scale_lr_steps(lr_steps: dict, from_epochs: int, to_epochs: int) -> dict:
    """The drops of a `from_epochs` schedule moved to `to_epochs`, keeping the fraction of epochs before each: a drop
    after epoch E (E + 1 epochs at the higher lr) moves after round((E + 1) * to / from) - 1, within 0..to - 2;
    drops that land on one epoch multiply; none is left when to_epochs < 2."""
    if to_epochs < 2:
        return {}
    out = {}
    for epoch, factor in sorted(lr_steps.items()):
        before = math.floor((epoch + 1) * to_epochs / from_epochs + 0.5)
        moved = min(max(before - 1, 0), to_epochs - 2)
        out[moved] = out.get(moved, 1.0) * factor
    return out


def schedule_note(config: "TrainConfig") -> str | None:
    """One line when `config`'s drops are its preset's, scaled to other epochs (None otherwise)."""
    preset = _PRESETS.get((config.preset, config.stage))
    if preset is None or config.epochs == preset["epochs"]:
        return None
    if config.lr_steps != scale_lr_steps(preset["lr_steps"], preset["epochs"], config.epochs):
        return None
    original = ", ".join(f"x{f:g} after epoch {e}" for e, f in preset["lr_steps"].items())
    drops = ", ".join(f"x{f:g} after epoch {e}" for e, f in config.lr_steps.items()) or "no lr drop"
    return (f"lr schedule for {config.epochs} epoch(s): {drops} (0-based), the {config.preset} {config.stage} "
            f"preset's {original} of {preset['epochs']} scaled to the epochs chosen")


def lr_at(epoch: int, config: TrainConfig) -> float:
    """Learning rate of 0-based `epoch`: `lr` times every factor whose step epoch is < `epoch` (drops apply after
    their epoch)."""
    lr = config.lr
    for step_epoch, factor in config.lr_steps.items():
        if epoch > step_epoch:
            lr *= factor
    return lr


# (preset, stage) -> settings; arch-specific batch sizes are applied in `preset_config`.
_PRESETS = {
    # the seed paper's text: source 1e-2 -> 1e-3 after epoch 80 of 100; fine-tuning 1e-3 -> 1e-4 after 15 of 20
    ("paper", "source"): dict(lr=1e-2, lr_steps={80: 0.1}, epochs=100, iters_per_epoch=100, batch_size=32),
    ("paper", "finetune"): dict(lr=1e-3, lr_steps={15: 0.1}, epochs=20, iters_per_epoch=100, batch_size=32),
    # what kechua/DART20's configs ran (REFERENCE.md section 4)
    ("dart20-code", "source"): dict(lr=1e-3, lr_steps={80: 0.1}, epochs=100, iters_per_epoch=100, batch_size=32),
    ("dart20-code", "finetune"): dict(lr=1e-3, lr_steps={15: 0.1}, epochs=20, iters_per_epoch=100, batch_size=32),
    # what neuro-ml/domain_shift_anatomy's configs ran
    ("dsa-code", "source"): dict(lr=1e-3, lr_steps={80: 0.1}, epochs=100, iters_per_epoch=100, batch_size=16),
    ("dsa-code", "finetune"): dict(lr=1e-3, lr_steps={45: 0.1}, epochs=60, iters_per_epoch=100, batch_size=16),
}
PRESETS = tuple(dict.fromkeys(name for name, _ in _PRESETS))


def preset_config(preset: str = "paper", stage: str = "source", arch: str = "dart20", **overrides) -> TrainConfig:
    """The named preset for `stage` ("source" or "finetune") and `arch`, with keyword overrides applied last.

    The vanilla U-Net uses batch 16 in every preset (as the reference ran it).
    """
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    if stage not in STAGES:
        raise InputError(f"stage {stage!r} is not valid; valid: {', '.join(STAGES)}")
    settings = dict(_PRESETS[preset, stage], arch=check_arch(arch), stage=stage, preset=preset)
    if arch == "vanilla":
        settings["batch_size"] = 16
    return with_overrides(TrainConfig(**settings), overrides)


def with_overrides(config: TrainConfig, overrides: dict) -> TrainConfig:
    """A copy of `config` with `overrides` (None values ignored); unknown keys are a one-line InputError."""
    valid = {f.name for f in fields(TrainConfig)}
    changes = {k.replace("-", "_"): v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(changes) - valid)
    if unknown:
        raise InputError(f"unknown config key {unknown[0]!r}; valid: {', '.join(sorted(valid))}")
    changes = {k: _coerce(k, v, getattr(config, k)) for k, v in changes.items()}
    if "epochs" in changes and "lr_steps" not in changes and changes["epochs"] != config.epochs:
        # the drops follow the epochs chosen (the preset's fraction); only drops given with the epochs are checked
        changes["lr_steps"] = scale_lr_steps(config.lr_steps, config.epochs, changes["epochs"])
    return dataclasses.replace(config, **changes)


def _coerce(name, value, current):
    """Give `value` the type of the current field value (YAML reads `1e-3` as a string, CLI flags are strings)."""
    if isinstance(current, bool):
        if isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise InputError(f"{name} must be true or false, got {value!r}")
            return value.lower() in ("true", "1", "yes")
        return bool(value)
    try:
        if isinstance(current, int):
            if float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        if isinstance(current, float):
            return float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a {type(current).__name__}, got {value!r}") from None
    if isinstance(current, dict):
        if name == "augment":
            return value  # a mode, preset or dict: resolved by TrainConfig
        if isinstance(value, str):
            # "80:0.1,90:0.5" from a command line
            try:
                value = dict(item.split(":") for item in value.split(",") if item.strip())
            except ValueError:
                raise InputError(f"{name} must look like 80:0.1[,90:0.1], got {value!r}") from None
        if name == "augment":
            return value  # resolved by TrainConfig
        if isinstance(value, (list, tuple)):  # repeated PATTERN=FACTOR flags
            try:
                value = dict(item.rsplit("=", 1) for item in value)
            except ValueError:
                raise InputError(f"{name} must look like PATTERN=FACTOR, got {value!r}") from None
        return value
    return value


def load_config(path, base: TrainConfig = None) -> TrainConfig:
    """Read a YAML mapping of TrainConfig fields; keys it omits come from `base` (default: the preset it names)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    if base is None:
        base = preset_config(data.get("preset", "paper"), data.get("stage", "source"), data.get("arch", "dart20"))
    try:
        return with_overrides(base, data)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


def save_config(config: TrainConfig, path) -> None:
    """Write `config.resolved()` as YAML, atomically; a leading comment says when the drops are a scaled preset's."""
    note = schedule_note(config)
    header = f"# {note}\n" if note else ""
    write_text_atomic(path, header + yaml.safe_dump(config.resolved(), sort_keys=False))
