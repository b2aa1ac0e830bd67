"""The registry of adaptation strategies: name -> `build(model, arch, options, *, budget)` returning a `Strategy`.

A new strategy is one module in this package plus one line in STRATEGIES.
"""
from __future__ import annotations

from typing import Optional

from ...errors import InputError
from . import adabn, auto_rgn, freeze, gradual, histogram, none, spottune
from .base import Strategy

STRATEGIES = {
    "freeze": freeze.build,
    "gradual": gradual.build,
    "adabn": adabn.build,
    "auto-rgn": auto_rgn.build,
    "histogram": histogram.build,
    "none": none.build,
    "spottune": spottune.build,
}
# strategies that never read a target mask: their runs have no label budget
LABEL_FREE = ("none", "adabn", "histogram")


def make_strategy(name: str, model, arch: str, options: Optional[dict] = None, *, budget=None) -> Strategy:
    """The strategy `name` for `model` with `options` (dict of strategy options, None values dropped); `budget`
    (scans, 1/k) lets a strategy pick budget-dependent defaults (SpotTUnet's lambda)."""
    if name not in STRATEGIES:
        raise InputError(f"--strategy {name!r} is not valid; valid: {', '.join(STRATEGIES)}")
    options = {k: v for k, v in dict(options or {}).items() if v is not None}
    return STRATEGIES[name](model, arch, options, budget=budget)
