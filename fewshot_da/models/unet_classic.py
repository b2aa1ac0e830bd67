"""Ronneberger-style 2D U-Net fine-tuned by the ultrasound paper (Amiri et al. 2019; REFERENCE.md section 7).

Blocks of two 3x3 conv + ReLU (no batch norm), max-pool down, 2x upsampling followed by a 2x2 conv up, concatenated
skips, dropout 0.5 on the two deepest contracting blocks (the widely used Keras layout), a 1x1 conv to one logit.
At the paper's width (64 filters) it has 31,030,593 parameters; `n_filters` (CLI `--base-filters`) narrows it for CPU studies.
"""
import torch
from torch import nn


def _two_convs(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU(inplace=True))


class _Down(nn.Module):
    """Contracting block: two convs, optional dropout; the pooling happens before the next block."""

    def __init__(self, c_in, c_out, dropout=0.0):
        super().__init__()
        self.convs = _two_convs(c_in, c_out)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x):
        return self.dropout(self.convs(x))


class _Up(nn.Module):
    """Expanding block: 2x nearest upsampling, a 2x2 conv halving the channels (+ReLU), concat skip, two convs."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.ZeroPad2d((0, 1, 0, 1)),
                                nn.Conv2d(c_in, c_out, 2), nn.ReLU(inplace=True))
        self.convs = _two_convs(2 * c_out, c_out)

    def forward(self, x, skip):
        return self.convs(torch.cat([skip, self.up(x)], dim=1))


class UNet2dClassic(nn.Module):
    """9 two-conv blocks (block1-4 contracting, block5 at the bottom, block6-9 expanding) and a 1x1 `head`.

    Input (B, in_channels, H, W) with H, W divisible by 16; output logits (B, out_channels, H, W) (sigmoid > 0.5).
    """

    PAD_MULTIPLE = 16
    GROUPS = {
        "first": ("block1.convs.0",),
        "last": ("head",),
        # the paper's experiment 1: contracting = the first 10 convs (blocks 1-5), expanding = the rest
        "contracting": ("block1", "block2", "block3", "block4", "block5"),
        "expanding": ("block6", "block7", "block8", "block9", "head"),
    }
    BLOCKS = (("block1",), ("block2",), ("block3",), ("block4",), ("block5",), ("block6",), ("block7",),
              ("block8",), ("block9", "head"))

    def __init__(self, in_channels=1, out_channels=1, n_filters=64):
        super().__init__()
        n = n_filters
        self.block1 = _Down(in_channels, n)
        self.block2 = _Down(n, 2 * n)
        self.block3 = _Down(2 * n, 4 * n)
        self.block4 = _Down(4 * n, 8 * n, dropout=0.5)
        self.block5 = _Down(8 * n, 16 * n, dropout=0.5)
        self.block6 = _Up(16 * n, 8 * n)
        self.block7 = _Up(8 * n, 4 * n)
        self.block8 = _Up(4 * n, 2 * n)
        self.block9 = _Up(2 * n, n)
        self.head = nn.Conv2d(n, out_channels, 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.block1(x)
        x2 = self.block2(self.pool(x1))
        x3 = self.block3(self.pool(x2))
        x4 = self.block4(self.pool(x3))
        x5 = self.block5(self.pool(x4))
        u = self.block6(x5, x4)
        u = self.block7(u, x3)
        u = self.block8(u, x2)
        u = self.block9(u, x1)
        return self.head(u)
