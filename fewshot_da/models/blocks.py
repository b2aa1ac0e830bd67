"""Building blocks with deep_pipe (dpipe) semantics and state-dict key layout: pre/post-activation convs, ResBlock."""
from torch import nn


class PreActivation2d(nn.Module):
    """BatchNorm2d(in) -> ReLU -> Conv2d(in -> out); the conv has a bias unless `bias=False` (dpipe default True).

    Submodule names `bn`, `activation`, `layer` match dpipe's `PreActivation`, so its state-dict keys load as-is.
    """

    def __init__(self, in_channels, out_channels, *, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.activation = nn.ReLU()
        self.layer = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)

    def forward(self, x):
        return self.layer(self.activation(self.bn(x)))


class PostActivation2d(nn.Module):
    """Conv2d(in -> out, no bias) -> BatchNorm2d(out) -> ReLU (dpipe's `PostActivation`: `layer`, `activation`, `bn`)."""

    def __init__(self, in_channels, out_channels, *, kernel_size, stride=1, padding=0):
        super().__init__()
        # registration order layer, activation, bn reproduces dpipe's state-dict key order
        self.layer = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.activation = nn.ReLU()
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        return self.activation(self.bn(self.layer(x)))


class ResBlock2d(nn.Module):
    """x + PreAct(PreAct(x)): two bias-free pre-activation convs c -> c and an identity shortcut.

    As dpipe's `ResBlock2d(c, c, kernel_size=k, padding=p)`: nothing follows the addition (no BN, no ReLU). Only the
    equal-channel, stride-1 case is used by the U-Nets, so the shortcut never carries parameters.
    """

    def __init__(self, channels, *, kernel_size, padding=0):
        super().__init__()
        if kernel_size - 1 != 2 * padding:
            raise ValueError(f"ResBlock2d needs a shape-preserving conv, got kernel_size={kernel_size}, padding={padding}")
        self.conv_path = nn.Sequential(
            PreActivation2d(channels, channels, kernel_size=kernel_size, padding=padding, bias=False),
            PreActivation2d(channels, channels, kernel_size=kernel_size, padding=padding, bias=False),
        )

    def forward(self, x):
        return self.conv_path(x) + x
