"""Residual 2D U-Net of the first-layers paper (kechua/DART20 `UNet2D`, 16 initial filters; 2,434,771 parameters)."""
import torch
from torch import nn

from .blocks import PreActivation2d, ResBlock2d


def _res_blocks(channels, n=3):
    return [ResBlock2d(channels, kernel_size=3, padding=1) for _ in range(n)]


def _down(c_in):
    # BN, strided 2x2 conv, ReLU, (disabled dropout), 3 ResBlocks
    return [nn.BatchNorm2d(c_in), nn.Conv2d(c_in, 2 * c_in, 2, stride=2, bias=False), nn.ReLU(), nn.Identity(),
            *_res_blocks(2 * c_in)]


def _up(c_in):
    # 3 ResBlocks, BN, 2x2 transposed conv, ReLU, (disabled dropout)
    return [*_res_blocks(c_in), nn.BatchNorm2d(c_in), nn.ConvTranspose2d(c_in, c_in // 2, 2, stride=2, bias=False),
            nn.ReLU(), nn.Identity()]


class UNet2dDart20(nn.Module):
    """4 levels (n, 2n, 4n, 8n channels), additive skips through biased 1x1 convs, BatchNorm on the output logit.

    Module names and nn.Sequential indices are those of the reference, so its state dicts load unchanged.
    Input (B, in_channels, H, W) with H, W divisible by 8; output logits (B, out_channels, H, W).
    """

    PAD_MULTIPLE = 8
    # first/last: the reference's trainable sets (REFERENCE.md 1.5: 3 convs each). contracting/expanding (our
    # mapping for the ultrasound study): the encoder down to the deepest ResBlocks vs decoder, head and skip convs.
    GROUPS = {
        "first": ("init_path.0", "init_path.2"),
        "last": ("out_path",),
        "contracting": ("init_path", "down1", "down2", "down3"),
        "expanding": ("up3", "up2", "up1", "out_path", "shortcut0", "shortcut1", "shortcut2"),
    }
    # resolution stages in forward order; a skip conv belongs to the decoder stage that consumes it
    BLOCKS = (("init_path",), ("down1",), ("down2",), ("down3",), ("up3",), ("up2", "shortcut2"),
              ("up1", "shortcut1"), ("out_path", "shortcut0"))

    def __init__(self, in_channels=1, out_channels=1, n_filters=16):
        super().__init__()
        n = n_filters
        self.init_path = nn.Sequential(nn.Conv2d(in_channels, n, 3, padding=1, bias=False), nn.ReLU(), *_res_blocks(n))
        self.shortcut0 = nn.Conv2d(n, n, 1)
        self.down1 = nn.Sequential(*_down(n))
        self.shortcut1 = nn.Conv2d(2 * n, 2 * n, 1)
        self.down2 = nn.Sequential(*_down(2 * n))
        self.shortcut2 = nn.Conv2d(4 * n, 4 * n, 1)
        self.down3 = nn.Sequential(*_down(4 * n), nn.Identity())
        self.up3 = nn.Sequential(*_up(8 * n))
        self.up2 = nn.Sequential(*_up(4 * n))
        self.up1 = nn.Sequential(*_up(2 * n))
        self.out_path = nn.Sequential(
            ResBlock2d(n, kernel_size=1, padding=0),
            PreActivation2d(n, out_channels, kernel_size=1, bias=True),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.init_path(x)
        x1 = self.down1(x0)
        x2 = self.down2(x1)
        x3 = self.down3(x2)
        u2 = self.up3(x3)
        u1 = self.up2(u2 + self.shortcut2(x2))
        u0 = self.up1(u1 + self.shortcut1(x1))
        return self.out_path(u0 + self.shortcut0(x0))
