"""The strategy record: what the training loop and the stages ask of an adaptation strategy, and its helpers.

`fit` asks a strategy three things: the trainable parameter names of each epoch, the optimizer's parameter groups
(per-group learning-rate factors and weight decay), and an optional extra loss term. Label-free strategies train
nothing (`trainable_at` is None) and may adjust the model (`prepare`) or the target preprocessing (`preprocess`)
before scoring.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from ...errors import InputError


@dataclass
class Strategy:
    """What the training loop and the stages need from a strategy; options are recorded with the run."""

    name: str
    options: dict
    # epoch -> parameter names trained in that epoch; None: no gradient training (label-free strategies)
    trainable_at: Optional[Callable[[int], Sequence[str]]]
    # all names ever trained -> [{"names": [...], "lr_scale": f, "weight_decay": wd (optional)}]
    param_groups: Callable[[Sequence[str]], list] = field(default=lambda names: [{"names": list(names)}])
    # (model) -> scalar tensor added to the segmentation loss, or None
    extra_loss: Optional[Callable] = None
    # (model, epoch, probe_batch, loss_fn) -> ({param name: lr factor}, rows for strategy.csv): per-epoch scales
    epoch_scales: Optional[Callable] = None
    # epoch -> extra metrics.csv columns (e.g. the trainable blocks)
    describe: Callable[[int], dict] = field(default=lambda epoch: {})
    # (model, volumes, batch_size) -> dict: label-free model update on the target's fine-tune images
    prepare: Optional[Callable] = None
    # (preprocess options, source run folder, source run spec) -> options for the target's volumes
    preprocess: Optional[Callable] = None
    # (model) -> the module that trains and predicts instead of `model` (SpotTUnet's two-copy wrapper)
    wrap: Optional[Callable] = None
    # (model, epoch) -> rows for the record file, after each epoch
    epoch_end: Optional[Callable] = None
    record_file: str = "strategy.csv"
    # (model, scan id or None) -> rows for <record stem>_test.csv after a test scan (None: reset only)
    scan_record: Optional[Callable] = None

    @property
    def trains(self) -> bool:
        return self.trainable_at is not None

    def all_trainable(self, epochs: int) -> list:
        """Every name trained in some epoch, in first-trained order."""
        return list(dict.fromkeys(n for e in range(epochs) for n in self.trainable_at(e)))


def train_all(model) -> Strategy:
    """Every parameter trains every epoch (source training)."""
    names = [n for n, _ in model.named_parameters()]
    return Strategy("all", {}, lambda epoch: names)


def fixed(names: Sequence[str], name: str = "fixed") -> Strategy:
    """The given parameter names train every epoch."""
    names = list(names)
    return Strategy(name, {"names": names}, lambda epoch: names)


def check_options(name: str, options: dict, allowed: Sequence[str]) -> dict:
    """`options` restricted to `allowed`; an unknown key is a one-line InputError naming the strategy."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise InputError(f"--strategy {name}: option {unknown[0]!r} does not apply; it takes "
                         f"{', '.join(allowed) or 'no options'}")
    return dict(options)
