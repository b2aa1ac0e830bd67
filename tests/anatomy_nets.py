"""Two test-only networks for the traced anatomy (`fewshot_da.models.anatomy.describe`), written here so no new
dependency is needed: a nested U-Net in MONAI's layout and an nnU-Net-like encoder-decoder with deep supervision.

Factories for `fewshot-da layers --model tests/anatomy_nets.py:nested_unet` (or `:encoder_decoder`).
"""
from collections import OrderedDict

import torch
from torch import nn


class SkipConnection(nn.Module):
    """[x, submodule(x)] concatenated along the channels (the layout of MONAI's SkipConnection, cat mode)."""

    def __init__(self, submodule: nn.Module):
        super().__init__()
        self.submodule = submodule

    def forward(self, x):
        return torch.cat([x, self.submodule(x)], dim=1)


class ConvBlock(nn.Sequential):
    """3x3 conv (strided, or transposed to upsample) -> BatchNorm -> PReLU; conv_only keeps just the conv (head)."""

    def __init__(self, c_in, c_out, *, stride=1, transposed=False, conv_only=False):
        if transposed:
            conv = nn.ConvTranspose2d(c_in, c_out, 3, stride=stride, padding=1, output_padding=stride - 1)
        else:
            conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
        layers = [("conv", conv)]
        if not conv_only:
            layers += [("norm", nn.BatchNorm2d(c_out)), ("act", nn.PReLU())]
        super().__init__(OrderedDict(layers))


def nested_unet(in_channels: int = 1, out_channels: int = 2) -> nn.Module:
    """Sequential(down, SkipConnection(Sequential(down, SkipConnection(bottom), up)), up), channels 4, 8, 16.

    Every down block is a stride-2 conv, so even the first conv halves the resolution (MONAI's UNet); the last up
    block is a bare transposed conv that returns to full resolution and is the head.
    """
    return nn.Sequential(
        ConvBlock(in_channels, 4, stride=2),
        SkipConnection(nn.Sequential(
            ConvBlock(4, 8, stride=2),
            SkipConnection(ConvBlock(8, 16)),
            ConvBlock(8 + 16, 4, stride=2, transposed=True),
        )),
        ConvBlock(4 + 4, out_channels, stride=2, transposed=True, conv_only=True),
    )


class ConvNormAct(nn.Module):
    """3x3 conv -> InstanceNorm (affine, no running statistics: nnU-Net's default) -> LeakyReLU."""

    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
        self.norm = nn.InstanceNorm2d(c_out, affine=True)
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))


class Encoder(nn.Module):
    """Four stages of two ConvNormAct (widths 4, 8, 16, 32); stages after the first start with a stride-2 conv."""

    def __init__(self, in_channels, widths=(4, 8, 16, 32)):
        super().__init__()
        self.widths = widths
        self.stages = nn.ModuleList(
            nn.Sequential(ConvNormAct(widths[i - 1] if i else in_channels, w, stride=2 if i else 1),
                          ConvNormAct(w, w))
            for i, w in enumerate(widths))

    def forward(self, x):
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class Decoder(nn.Module):
    """Per stage, coarse to fine: 2x2 transposed conv, concatenated skip, one ConvNormAct, a 1x1 seg layer.

    Like nnU-Net's decoder it keeps a reference to the encoder and builds a seg layer for every stage; only the
    finest `supervised` stages' seg layers run, so the coarsest one is never called.
    """

    def __init__(self, encoder: Encoder, out_channels: int, supervised: int = 2):
        super().__init__()
        widths = encoder.widths[::-1]
        # registered before the encoder reference: registration order is not execution order
        self.transpconvs = nn.ModuleList(nn.ConvTranspose2d(a, b, 2, stride=2) for a, b in zip(widths, widths[1:]))
        self.stages = nn.ModuleList(ConvNormAct(2 * b, b) for b in widths[1:])
        self.seg_layers = nn.ModuleList(nn.Conv2d(b, out_channels, 1) for b in widths[1:])
        self.encoder = encoder
        self.supervised = supervised

    def forward(self, skips):
        x, outputs = skips[-1], []
        n = len(self.stages)
        for i in range(n):
            x = self.stages[i](torch.cat([skips[-(i + 2)], self.transpconvs[i](x)], dim=1))
            if i >= n - self.supervised:
                outputs.append(self.seg_layers[i](x))
        return outputs[::-1]  # full resolution first, as nnU-Net


class EncoderDecoder(nn.Module):
    """Encoder and decoder, the decoder registered first; forward returns [full-resolution logits, half]."""

    def __init__(self, in_channels=1, out_channels=3):
        super().__init__()
        encoder = Encoder(in_channels)
        self.decoder = Decoder(encoder, out_channels)
        self.encoder = encoder

    def forward(self, x):
        return self.decoder(self.encoder(x))


def encoder_decoder(in_channels: int = 1, out_channels: int = 3) -> nn.Module:
    return EncoderDecoder(in_channels, out_channels)
