"""Updated residual 2D U-Net of the SpotTUnet paper (neuro-ml/domain_shift_anatomy `UNet2D`; 1,561,491 parameters)."""
import torch
from torch import nn

from .blocks import PreActivation2d, ResBlock2d


def _res_blocks(channels, n=3):
    return [ResBlock2d(channels, kernel_size=3, padding=1) for _ in range(n)]


def _down(c_in):
    # pre-activated strided 2x2 conv without bias, then 3 ResBlocks
    return [PreActivation2d(c_in, 2 * c_in, kernel_size=2, stride=2, bias=False), *_res_blocks(2 * c_in)]


class UNet2dDsa(nn.Module):
    """Like the DART20 net, but no ReLU after the first conv, pre-activated downsampling, a `bottleneck` with 3
    ResBlocks at 1/8 ending in the transposed conv, bare transposed convs, and 3 ResBlocks (3x3) in `out_path`.

    Module names and nn.Sequential indices are those of the reference. Input H, W divisible by 8.
    """

    PAD_MULTIPLE = 8
    # DSA's last leaves the final BN(1) frozen. `bottleneck` is split: its strided conv and ResBlocks (.0-.3)
    # contract, its transposed conv (.4) expands, mirroring DART20 where the transposed conv at 1/8 sits in `up3`.
    GROUPS = {
        "first": ("init_path.0", "init_path.1"),
        "last": ("out_path.2", "out_path.3"),
        "contracting": ("init_path", "down1", "down2", "bottleneck.0", "bottleneck.1", "bottleneck.2",
                        "bottleneck.3"),
        "expanding": ("bottleneck.4", "up2", "up1", "out_path", "shortcut0", "shortcut1", "shortcut2"),
    }
    BLOCKS = (("init_path",), ("down1",), ("down2",), ("bottleneck",), ("up2", "shortcut2"), ("up1", "shortcut1"),
              ("out_path", "shortcut0"))

    def __init__(self, in_channels=1, out_channels=1, n_filters=16):
        super().__init__()
        n = n_filters
        self.init_path = nn.Sequential(nn.Conv2d(in_channels, n, 3, padding=1, bias=False), *_res_blocks(n))
        self.shortcut0 = nn.Conv2d(n, n, 1)
        self.down1 = nn.Sequential(*_down(n))
        self.shortcut1 = nn.Conv2d(2 * n, 2 * n, 1)
        self.down2 = nn.Sequential(*_down(2 * n))
        self.shortcut2 = nn.Conv2d(4 * n, 4 * n, 1)
        self.bottleneck = nn.Sequential(*_down(4 * n), nn.ConvTranspose2d(8 * n, 4 * n, 2, stride=2, bias=False))
        self.up2 = nn.Sequential(*_res_blocks(4 * n), nn.ConvTranspose2d(4 * n, 2 * n, 2, stride=2, bias=False))
        self.up1 = nn.Sequential(*_res_blocks(2 * n), nn.ConvTranspose2d(2 * n, n, 2, stride=2, bias=False))
        self.out_path = nn.Sequential(
            *_res_blocks(n),
            PreActivation2d(n, out_channels, kernel_size=1, bias=True),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.init_path(x)
        x1 = self.down1(x0)
        x2 = self.down2(x1)
        # the /4 skip is added after the bottleneck's transposed conv
        u1 = self.up2(self.bottleneck(x2) + self.shortcut2(x2))
        u0 = self.up1(u1 + self.shortcut1(x1))
        return self.out_path(u0 + self.shortcut0(x0))
