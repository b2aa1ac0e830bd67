"""How to rebuild a network: a class path plus keyword arguments (as nnU-Net's plans and nanoGPT's `model_args`).

A run records it in its checkpoint (`network`) and summary.json; every verb rebuilds the network from that record.
Rebuilding imports the class's module, so a record is trusted like the code it names.
"""
from __future__ import annotations

import importlib

from torch import nn

from ..errors import InputError
from . import model_class


def network_spec(cls: type, **kwargs) -> dict:
    """{"class_path": "package.module.Class", "kwargs": {...}} for `cls` built with `kwargs` (plain data only)."""
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "kwargs": dict(kwargs)}


def builtin_spec(arch: str, *, in_channels: int = 1, out_channels: int = 1, base_filters: int = 0) -> dict:
    """The record of one of the four built-in U-Nets; base_filters 0 keeps the paper's width."""
    if base_filters and int(base_filters) < 1:
        raise InputError(f"--base-filters must be >= 1, got {base_filters}")
    width = {"n_filters": int(base_filters)} if base_filters else {}
    return network_spec(model_class(arch), in_channels=int(in_channels), out_channels=int(out_channels), **width)


def build_network(spec: dict, *, where: str = "network record") -> nn.Module:
    """A freshly initialised network from its record; the record is kept on it as `network_spec`."""
    try:
        path, kwargs = spec["class_path"], dict(spec.get("kwargs") or {})
        module_name, _, class_name = str(path).rpartition(".")
    except (KeyError, TypeError, AttributeError):
        raise InputError(f"{where}: not a network record (needs class_path and kwargs)") from None
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise InputError(f"{where}: cannot import {path!r} ({type(exc).__name__}: {exc})") from None
    try:
        model = cls(**kwargs)
    except TypeError as exc:
        raise InputError(f"{where}: {path}({', '.join(kwargs)}) failed: {exc}") from None
    model.network_spec = {"class_path": path, "kwargs": kwargs}
    model.base_filters = int(kwargs.get("n_filters", 0)) if path.startswith("fewshot_da.models.") else 0
    return model


def spec_of(model: nn.Module):
    """The record a network was built from, or None (a module built elsewhere)."""
    return getattr(model, "network_spec", None)
