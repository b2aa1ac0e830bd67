"""2D U-Nets by name: the reference papers' DART20 residual, DSA residual and vanilla nets, and the ultrasound
paper's classic U-Net. Each model class declares what the rest of the package needs to know about it:
`PAD_MULTIPLE` (inference padding), `GROUPS` (first, last, contracting, expanding as module-path prefixes) and
`BLOCKS` (resolution stages in forward order, for gradual unfreezing). `describe(model)` (models/anatomy.py) reads them
from an instance, or traces any other module."""
import importlib
import importlib.util
from pathlib import Path

from torch import nn

from ..errors import InputError
from .anatomy import GROUP_NAMES, Anatomy, describe
from .blocks import PostActivation2d, PreActivation2d, ResBlock2d
from .unet_classic import UNet2dClassic
from .unet_dart20 import UNet2dDart20
from .unet_dsa import UNet2dDsa
from .unet_vanilla import UNet2dVanilla

_MODELS = {"dart20": UNet2dDart20, "dsa": UNet2dDsa, "vanilla": UNet2dVanilla, "classic": UNet2dClassic}
ARCHS = tuple(_MODELS)


def check_arch(arch: str) -> str:
    """Return `arch` if known, else raise a one-line InputError listing the valid names."""
    if arch not in _MODELS:
        raise InputError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHS)}")
    return arch


def model_class(arch: str) -> type:
    return _MODELS[check_arch(arch)]


def build_model(arch: str, *, in_channels: int = 1, out_channels: int = 1, base_filters: int = 0) -> nn.Module:
    """A freshly initialised (PyTorch default init) U-Net by name; base_filters 0 keeps the paper's width."""
    width = {"n_filters": int(base_filters)} if base_filters else {}
    if base_filters and int(base_filters) < 1:
        raise InputError(f"--base-filters must be >= 1, got {base_filters}")
    model = model_class(arch)(in_channels=in_channels, out_channels=out_channels, **width)
    model.base_filters = int(base_filters)  # recorded so wrappers (SpotTUnet) can build the same width
    return model


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def from_entry_point(entry: str) -> nn.Module:
    """The module `factory()` returns, for entry "package.module:factory" or "path/to/file.py:factory".

    One-line InputError when the module or file cannot be imported, has no such callable, the call fails, or it
    returns something that is not a torch.nn.Module.
    """
    where, sep, name = str(entry).rpartition(":")
    if not sep or not where or not name:
        raise InputError(f"--model {entry!r}: expected module:factory or path/to/file.py:factory")
    try:
        if where.endswith(".py") or "/" in where or "\\" in where:
            path = Path(where)
            if not path.is_file():
                raise InputError(f"--model {entry!r}: file {path} not found")
            spec = importlib.util.spec_from_file_location(f"fewshot_da_entry_{path.stem}", path)
            source = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(source)
        else:
            source = importlib.import_module(where)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"--model {entry!r}: cannot import {where} ({_first_line(exc)})") from None
    factory = getattr(source, name, None)
    if not callable(factory):
        raise InputError(f"--model {entry!r}: {where} has no callable {name!r}")
    try:
        model = factory()
    except Exception as exc:
        raise InputError(f"--model {entry!r}: {name}() failed ({_first_line(exc)})") from None
    if not isinstance(model, nn.Module):
        raise InputError(f"--model {entry!r}: {name}() returned {type(model).__name__}, not a torch.nn.Module")
    return model


def pad_multiple(arch: str) -> int:
    """Slices are padded to a multiple of this at inference (8 for the residual nets, 16 for vanilla/classic)."""
    return model_class(arch).PAD_MULTIPLE


def layer_groups(arch: str) -> dict:
    """{group name: tuple of module-path prefixes} for `arch`, including `all` (every top-level module)."""
    cls = model_class(arch)
    groups = dict(cls.GROUPS)
    groups["all"] = top_modules(arch)
    return {name: groups[name] for name in GROUP_NAMES}


def top_modules(arch: str) -> tuple:
    """Names of the top-level modules that hold parameters, in block (forward) order."""
    return tuple(dict.fromkeys(prefix for block in model_class(arch).BLOCKS for prefix in block))


def blocks(arch: str) -> tuple:
    """Resolution stages, shallow (input side) to deep (output side): tuples of module-path prefixes."""
    return model_class(arch).BLOCKS


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["ARCHS", "GROUP_NAMES", "Anatomy", "describe", "from_entry_point", "build_model", "pad_multiple",
           "check_arch", "count_parameters", "layer_groups", "blocks", "top_modules", "model_class",
           "PreActivation2d", "PostActivation2d", "ResBlock2d", "UNet2dDart20", "UNet2dDsa", "UNet2dVanilla",
           "UNet2dClassic"]
