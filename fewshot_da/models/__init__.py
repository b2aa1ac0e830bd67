"""2D U-Nets of the reference papers (DART20 residual, DSA residual, vanilla) built by name."""
from torch import nn

from ..errors import InputError
from .blocks import PostActivation2d, PreActivation2d, ResBlock2d
from .unet_dart20 import UNet2dDart20
from .unet_dsa import UNet2dDsa
from .unet_vanilla import UNet2dVanilla

_MODELS = {"dart20": UNet2dDart20, "dsa": UNet2dDsa, "vanilla": UNet2dVanilla}
ARCHS = tuple(_MODELS)
# spatial size the input must be divisible by: 3 poolings (residual nets) or 4 (vanilla)
_PAD_MULTIPLE = {"dart20": 8, "dsa": 8, "vanilla": 16}


def check_arch(arch: str) -> str:
    """Return `arch` if known, else raise a one-line InputError listing the valid names."""
    if arch not in _MODELS:
        raise InputError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHS)}")
    return arch


def build_model(arch: str, *, in_channels: int = 1, out_channels: int = 1) -> nn.Module:
    """A freshly initialised (PyTorch default init) U-Net by name: 'dart20', 'dsa' or 'vanilla'."""
    return _MODELS[check_arch(arch)](in_channels=in_channels, out_channels=out_channels)


def pad_multiple(arch: str) -> int:
    """Slices are padded to a multiple of this at inference (8 for the residual nets, 16 for vanilla)."""
    return _PAD_MULTIPLE[check_arch(arch)]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["ARCHS", "build_model", "pad_multiple", "check_arch", "count_parameters", "PreActivation2d",
           "PostActivation2d", "ResBlock2d", "UNet2dDart20", "UNet2dDsa", "UNet2dVanilla"]
