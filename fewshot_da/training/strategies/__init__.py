"""Adaptation strategies: each a short module whose `build(model, arch, options, *, budget)` returns a `Strategy`
(`base`); `registry` maps names to them. A new strategy is one module here plus one line in the registry.
"""
from .base import Strategy, check_options, fixed, train_all
from .registry import LABEL_FREE, STRATEGIES, make_strategy

__all__ = ["Strategy", "check_options", "fixed", "train_all", "LABEL_FREE", "STRATEGIES", "make_strategy"]
