"""The label set of a segmentation task: class names and values, outputs, activation, loss, logits -> mask.

Modelled on nnU-Net's LabelManager: one foreground (binary, one sigmoid logit: the papers' setting and the default),
several exclusive classes (softmax over classes, background included), or regions (nnU-Net's tuples of label
values; one sigmoid logit per region, predicted in region order so a later region overwrites an earlier one).
Masks are integer label maps; a region's mask is the union of its values.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..data.manifest import BINARY_FOREGROUND
from ..errors import InputError

Value = Union[int, tuple]
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")
LOSSES = ("bce", "dice", "bce+dice", "ce", "ce+dice")


@dataclass(frozen=True)
class LabelSet:
    """Names (background first) and values; a value is an int, or a tuple of ints for a region."""

    names: tuple
    values: tuple

    def __post_init__(self):
        if len(self.names) != len(self.values) or len(self.names) < 2:
            raise InputError("a label set needs a background and at least one foreground label, each with a value")
        if self.values[0] != 0:
            raise InputError(f"label set: the first label ({self.names[0]!r}) must be the background, value 0")
        for name in self.names:
            if not _NAME.match(str(name)):
                raise InputError(f"label set: label name {name!r} must start with a letter and hold only letters, "
                                 "digits, '_' or '-'")
        if len(set(self.names)) != len(self.names):
            raise InputError(f"label set: duplicate label name in {', '.join(self.names)}")
        if self.has_regions and not all(isinstance(v, tuple) for v in self.values[1:]):
            raise InputError("label set: with regions, every foreground label must be a tuple of values")
        flat = [v for v in self.values if not isinstance(v, tuple)]
        if len(set(flat)) != len(flat) or any(not 0 <= v <= 255 for v in flat):
            raise InputError(f"label set: values must be distinct integers in 0..255, got {list(self.values)}")

    # --- construction --------------------------------------------------------------------------------------------
    @classmethod
    def binary(cls, foreground: str = BINARY_FOREGROUND) -> "LabelSet":
        """Background 0 and one foreground 1 (the default of every run)."""
        return cls(("background", foreground), (0, 1))

    @classmethod
    def from_mapping(cls, mapping: dict) -> "LabelSet":
        """From nnU-Net's dataset.json `labels` block: {name: value or [values] (a region)}, background 0 first."""
        names, values = [], []
        for name, value in mapping.items():
            if isinstance(value, (list, tuple)):
                value = tuple(int(v) for v in value)
                if not names and len(value) == 1:  # the background written as [0]
                    value = value[0]
            elif isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InputError(f"label set: label {name!r} has value {value!r}; expected an integer or a list")
            else:
                value = int(value)
            names.append(str(name))
            values.append(value)
        return cls(tuple(names), tuple(values))

    @classmethod
    def parse(cls, text: str) -> "LabelSet":
        """From `background=0,csf=1,gm=2,wm=3` (a region as `brain=1+2+3`)."""
        mapping = {}
        for part in filter(None, (p.strip() for p in str(text).split(","))):
            name, sep, value = part.partition("=")
            try:
                parsed = tuple(int(v) for v in value.split("+"))
            except ValueError:
                parsed = None
            if not sep or parsed is None:
                raise InputError(f"--labels {text!r}: {part!r} is not NAME=VALUE (e.g. background=0,csf=1,gm=2)")
            mapping[name.strip()] = parsed[0] if len(parsed) == 1 else parsed
        return cls.from_mapping(mapping)

    def as_dict(self) -> dict:
        """{name: value or [values]}: the form run.yaml, checkpoints and manifests record."""
        return {n: (list(v) if isinstance(v, tuple) else v) for n, v in zip(self.names, self.values)}

    # --- what the network and the loop need ---------------------------------------------------------------------
    @property
    def has_regions(self) -> bool:
        return any(isinstance(v, tuple) for v in self.values[1:])

    @property
    def foreground(self) -> tuple:
        """Foreground label names, in output order."""
        return self.names[1:]

    @property
    def is_binary(self) -> bool:
        return len(self.names) == 2 and not self.has_regions

    @property
    def activation(self) -> str:
        """sigmoid (one foreground, or regions) or softmax (exclusive classes)."""
        return "sigmoid" if self.is_binary or self.has_regions else "softmax"

    @property
    def num_outputs(self) -> int:
        """Output channels of the network: 1 (binary), one per region, or one per class with the background."""
        return len(self.names) - 1 if self.activation == "sigmoid" else len(self.names)

    def default_loss(self) -> str:
        return "bce" if self.activation == "sigmoid" else "ce+dice"

    def loss(self, name: str) -> Callable:
        """loss(logits (B, C, H, W), target label map (B, 1, H, W) of values) for `name`."""
        if self.activation == "sigmoid":
            if name not in ("bce", "dice", "bce+dice"):
                raise InputError(f"--loss {name!r} does not apply to sigmoid outputs; valid: bce, dice, bce+dice")
            bce = nn.BCEWithLogitsLoss()
            if self.is_binary:
                return _sigmoid_loss(name, bce, lambda target: target)
            return _sigmoid_loss(name, bce, self.region_targets)
        if name not in ("ce", "ce+dice"):
            raise InputError(f"--loss {name!r} does not apply to softmax outputs; valid: ce, ce+dice")
        return _softmax_loss(name, torch.tensor([int(v) for v in self.values]))

    def region_targets(self, target: torch.Tensor) -> torch.Tensor:
        """(B, R, H, W) float targets, one channel per region (or per foreground value), from a label map."""
        channels = []
        for value in self.values[1:]:
            members = value if isinstance(value, tuple) else (value,)
            channels.append(sum((target == v) for v in members).clamp(max=1))
        return torch.cat([c.to(torch.float32) for c in channels], dim=1)

    def to_mask(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, H, W) uint8 label map from (B, C, H, W) logits: sigmoid > 0.5 (binary), argmax (classes), or each
        region's > 0.5 in region order (a region's label is its first value)."""
        if self.is_binary:
            return (torch.sigmoid(logits[:, 0]) > 0.5).to(torch.uint8)
        if self.activation == "softmax":
            lut = torch.tensor([int(v) for v in self.values], dtype=torch.uint8, device=logits.device)
            return lut[logits.argmax(1)]
        out = torch.zeros(logits.shape[:1] + logits.shape[2:], dtype=torch.uint8, device=logits.device)
        for k, value in enumerate(self.values[1:]):
            out[torch.sigmoid(logits[:, k]) > 0.5] = value[0]
        return out

    def label_masks(self, label_map: np.ndarray) -> dict:
        """{foreground name: bool mask} of a label map: the voxels each label (or region) covers."""
        label_map = np.asarray(label_map)
        out = {}
        for name, value in zip(self.names[1:], self.values[1:]):
            members = value if isinstance(value, tuple) else (value,)
            out[name] = np.isin(label_map, members)
        return out

    def metric_keys(self, metrics: Sequence[str]) -> list:
        """Column names of per-label scores: the metric names as they are for binary, `<metric>_<label>` else."""
        if self.is_binary:
            return list(metrics)
        return [f"{m}_{label}" for label in self.foreground for m in metrics]

    def check_values(self, values, where: str) -> None:
        """One-line InputError naming `where` when a mask holds a value outside the set."""
        allowed = {v for v in self.values if not isinstance(v, tuple)}
        allowed |= {x for v in self.values if isinstance(v, tuple) for x in v}
        bad = sorted(set(int(v) for v in values) - allowed)
        if bad:
            raise InputError(f"{where}: mask value {bad[0]} is not in the label set "
                             f"({', '.join(f'{n}={v}' for n, v in self.as_dict().items())})")


BINARY = LabelSet.binary()


def soft_dice(p: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - (2 sum(p y) + s) / (sum(p) + sum(y) + s) over the whole batch (batch Dice)."""
    intersection = (p * target).sum()
    return 1.0 - (2.0 * intersection + smooth) / (p.sum() + target.sum() + smooth)


def _sigmoid_loss(name: str, bce, targets: Callable) -> Callable:
    def loss(logits, target):
        y = targets(target)
        if name == "bce":
            return bce(logits, y)
        dice = soft_dice(torch.sigmoid(logits), y)
        return dice if name == "dice" else bce(logits, y) + dice
    return loss


def _softmax_loss(name: str, values: torch.Tensor) -> Callable:
    """Cross-entropy over the classes (+ the mean soft Dice of the foreground classes, nnU-Net's default)."""
    def loss(logits, target):
        lut = torch.full((int(values.max()) + 1,), -1, dtype=torch.long)
        lut[values] = torch.arange(len(values))
        index = lut.to(target.device)[target[:, 0].long()]
        ce = nn.functional.cross_entropy(logits, index)
        if name == "ce":
            return ce
        p = torch.softmax(logits, 1)
        onehot = nn.functional.one_hot(index, len(values)).permute(0, 3, 1, 2).to(p.dtype)
        dice = torch.stack([soft_dice(p[:, k], onehot[:, k]) for k in range(1, len(values))]).mean()
        return ce + dice
    return loss


def label_set_of(record) -> LabelSet:
    """The label set a run record holds (`labels` as `as_dict()` wrote it), or the binary default without one."""
    mapping = (record or {}).get("labels") if isinstance(record, dict) else None
    return LabelSet.from_mapping(mapping) if mapping else BINARY


__all__ = ["LabelSet", "BINARY", "LOSSES", "label_set_of", "soft_dice"]
