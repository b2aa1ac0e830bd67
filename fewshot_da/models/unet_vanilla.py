"""Classic 2D U-Net of the first-layers paper (kechua/DART20 `VanillaUNet`, 64 initial filters; 31,035,522 params)."""
import torch
from torch import nn

from .blocks import PostActivation2d


def _pa(c_in, c_out):
    return PostActivation2d(c_in, c_out, kernel_size=3, padding=1)


def _convt(c_in):
    return nn.ConvTranspose2d(c_in, c_in // 2, 2, stride=2, bias=False)


class UNet2dVanilla(nn.Module):
    """5 levels (n .. 16n channels), max-pool down, transposed-conv up, concatenated skips [skip, upsampled],
    conv-BN-ReLU blocks, and a bias-free 1x1 conv plus BatchNorm on the logit. Input H, W divisible by 16.
    """

    PAD_MULTIPLE = 16
    GROUPS = {
        "first": ("init_path",),
        "last": ("out_path",),
        "contracting": ("init_path", "down1", "down2", "down3", "down4"),
        "expanding": ("up4", "up3", "up2", "up1", "out_path"),
    }
    BLOCKS = (("init_path",), ("down1",), ("down2",), ("down3",), ("down4",), ("up4",), ("up3",), ("up2",),
              ("up1",), ("out_path",))

    def __init__(self, in_channels=1, out_channels=1, n_filters=64):
        super().__init__()
        n = n_filters
        self.init_path = nn.Sequential(_pa(in_channels, n), _pa(n, n))
        self.down1 = nn.Sequential(nn.MaxPool2d(2), _pa(n, 2 * n), _pa(2 * n, 2 * n))
        self.down2 = nn.Sequential(nn.MaxPool2d(2), _pa(2 * n, 4 * n), _pa(4 * n, 4 * n))
        self.down3 = nn.Sequential(nn.MaxPool2d(2), _pa(4 * n, 8 * n), _pa(8 * n, 8 * n))
        self.down4 = nn.Sequential(nn.MaxPool2d(2), _pa(8 * n, 16 * n))
        self.up4 = nn.Sequential(_pa(16 * n, 16 * n), _convt(16 * n))
        self.up3 = nn.Sequential(_pa(16 * n, 8 * n), _pa(8 * n, 8 * n), _convt(8 * n))
        self.up2 = nn.Sequential(_pa(8 * n, 4 * n), _pa(4 * n, 4 * n), _convt(4 * n))
        self.up1 = nn.Sequential(_pa(4 * n, 2 * n), _pa(2 * n, 2 * n), _convt(2 * n))
        self.out_path = nn.Sequential(
            _pa(2 * n, n), _pa(n, n), nn.Conv2d(n, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.init_path(x)
        x1 = self.down1(x0)
        x2 = self.down2(x1)
        x3 = self.down3(x2)
        u3 = self.up4(self.down4(x3))
        u2 = self.up3(torch.cat([x3, u3], dim=1))
        u1 = self.up2(torch.cat([x2, u2], dim=1))
        u0 = self.up1(torch.cat([x1, u1], dim=1))
        return self.out_path(torch.cat([x0, u0], dim=1))
