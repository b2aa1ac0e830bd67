"""SpotTUnet on any described network: each decision unit of the traced anatomy (`anatomy.describe`) gets a
fine-tuned and a frozen copy, mixed at the unit's output per slice by the policy (REFERENCE.md §6).

A unit's mixing site is the deepest module that holds all of the unit's parameters and no other unit's (for a
conv -> norm -> activation block, the block), so its output is finetuned(x) * (1 - p) + frozen(x) * p on the same
input x. Where no such module exists, each of the unit's layers is a site of its own, mixed with the unit's p (the
same values for the hard decisions the policy takes; straight-through gradients then flow per layer). The mixing is
a forward hook on the fine-tuned copy, so the network's own forward supplies the wiring and parameter names are
the network's. A list output (deep supervision) gives its full-resolution map. The built-in U-Nets keep the
declared wrapper of `models/spottune.py`.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..errors import InputError
from .anatomy import describe
from .policy_net import DEFAULT_TEMPERATURE, PolicyNet
from .spottune import PolicyWrapper, mix


def mixing_sites(model: nn.Module, units) -> list:
    """[(module path, unit index)] where each unit mixes (see the module docstring), in unit order."""
    owner = {}
    for u in units:
        for name in u.params:
            owner[name] = u.index
    modules = dict(model.named_modules())
    sites = []
    for u in units:
        paths = [p.split(".") for p in u.modules]
        common = []
        for parts in zip(*paths):
            if len(set(parts)) != 1:
                break
            common.append(parts[0])
        path = ".".join(common)
        names = [f"{path}.{n}" for n, _ in modules[path].named_parameters()] if common else []
        site = path if names and all(owner.get(n) == u.index for n in names) else None
        sites += [(site, u.index)] if site is not None else [(p, u.index) for p in u.modules]
    return sites


def _full_resolution(output):
    if isinstance(output, (list, tuple)):
        return max(output, key=lambda t: math.prod(t.shape[2:]))
    return output


class TracedSpotTUnet(PolicyWrapper):
    """SpotTUnet for a traced network: `finetuned` (trainable) and `frozen` (requires_grad False) copies of
    `network` with its current weights, the `policy` network (2 logits per unit) and per-unit policy records; the
    same interface as `models.spottune.SpotTUnet` (forward(x, policy=None), last_policy, records, trainable_names).
    """

    def __init__(self, network: nn.Module, *, temperature: float = DEFAULT_TEMPERATURE, anatomy=None):
        super().__init__()
        if not temperature > 0:
            raise InputError(f"--temperature must be > 0, got {temperature}")
        anatomy = anatomy or describe(network)
        if not anatomy.units:
            raise InputError(f"--strategy spottune: {type(network).__name__} has no decision units (no conv layer "
                             "was traced)")
        self.temperature = float(temperature)
        self.finetuned = copy.deepcopy(network)
        self.frozen = copy.deepcopy(network).requires_grad_(False)
        self.units = tuple(anatomy.units)
        self.policy = PolicyNet(len(self.units), in_channels=anatomy.in_channels)
        self.sites = mixing_sites(self.finetuned, self.units)
        frozen_modules = dict(self.frozen.named_modules())
        finetuned_modules = dict(self.finetuned.named_modules())
        self._weights = None
        for path, unit in self.sites:
            finetuned_modules[path].register_forward_hook(self._mixer(frozen_modules[path], unit))
        self._init_records()

    def _mixer(self, frozen_module: nn.Module, unit: int):
        def hook(module, inputs, output):
            if self._weights is None:  # the copy run on its own (not through this wrapper): no mixing
                return output
            return mix(output, frozen_module(*inputs), self._weights[unit])
        return hook

    def forward(self, x: torch.Tensor, policy: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for x (B, C, H, W); `policy` (B, n_units) in [0, 1] overrides the policy network."""
        self._weights = self._decide(x, policy).unbind(1)
        try:
            return _full_resolution(self.finetuned(x))
        finally:
            self._weights = None
