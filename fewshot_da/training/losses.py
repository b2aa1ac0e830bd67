"""Segmentation losses on logits: BCE (the papers'), soft Dice, and their sum (as nnU-Net, for small structures);
for several labels, the label set's loss (softmax CE + soft Dice, or sigmoid per region)."""
import torch
from torch import nn

from ..errors import InputError
from ..models.labels import LabelSet


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - (2 sum(p y) + s) / (sum(p) + sum(y) + s) over the whole batch (batch Dice; empty slices are fine)."""
    p = torch.sigmoid(logits)
    intersection = (p * target).sum()
    return 1.0 - (2.0 * intersection + smooth) / (p.sum() + target.sum() + smooth)


def segmentation_loss(name: str, labels: LabelSet = None):
    """loss(logits, target) for `name`: bce (mean BCE with logits), dice (soft batch Dice) or bce+dice; with a
    label set of several labels, that set's loss of `name` (ce, ce+dice for classes)."""
    if labels is not None and not labels.is_binary:
        return labels.loss(name)
    bce = nn.BCEWithLogitsLoss()
    if name == "bce":
        return bce
    if name == "dice":
        return soft_dice_loss
    if name == "bce+dice":
        return lambda logits, target: bce(logits, target) + soft_dice_loss(logits, target)
    raise InputError(f"--loss {name!r} is not valid; valid: bce, dice, bce+dice")
