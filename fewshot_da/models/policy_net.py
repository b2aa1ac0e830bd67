"""SpotTUnet's policy network (a small ResNet giving 2 logits per decision unit) and its decision sampling.

Layout as the DSA code's `resnet(num_class=64)` (REFERENCE.md §6), which follows the original SpotTune agent
(Guo et al., CVPR 2019): stem conv3x3 1->32 + BN (no ReLU); three stages of one BasicBlock each (64, 128, 256
channels, stride 2) with an avg-pool + zero-channel shortcut; head BN, ReLU, global average pool, Linear.
"""
import itertools

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_TEMPERATURE = 0.1


def _conv3x3(c_in, c_out, stride=1):
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class _ZeroPadShortcut(nn.Module):
    """Parameter-free shortcut: 2x2 average pool, then the channels doubled with zeros (SpotTune's DownsampleB)."""

    def __init__(self, stride=2):
        super().__init__()
        self.pool = nn.AvgPool2d(stride)

    def forward(self, x):
        x = self.pool(x)
        return torch.cat([x, torch.zeros_like(x)], dim=1)


class _BasicBlock(nn.Module):
    """conv3x3 (strided) -> BN -> ReLU -> conv3x3 -> BN. The reference applies ReLU twice in a row after the first BN;
    ReLU is idempotent, so one is applied here (identical output and gradient)."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)

    def forward(self, x):
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


class PolicyNet(nn.Module):
    """Slice (B, in_channels, H, W) -> logits (B, n_units, 2); channel 1 of the last axis means "reuse the frozen unit".

    H and W must be even at every stage (divisible by 8): the stride-2 convs round up, the pooled shortcut rounds down.
    SpotTUnet feeds the U-Net's input, padded to a multiple of 8 (16 for vanilla) at inference, so this holds.

    Built: the used path only, 1,180,320 parameters for 32 units. Not built: the reference's duplicate
    `parallel_blocks` / `parallel_ds` (1.16 M parameters that its forward never touches), so its total of 2.34 M
    parameters and its state-dict keys for those blocks do not exist here. Init: convs He-normal with
    std sqrt(2 / (k * k * out_channels)), BN weight 1 / bias 0, Linear PyTorch default (as the reference).
    """

    def __init__(self, n_units: int, in_channels: int = 1, widths=(32, 64, 128, 256)):
        super().__init__()
        self.n_units = n_units
        self.stem = nn.Sequential(_conv3x3(in_channels, widths[0]), nn.BatchNorm2d(widths[0]))
        self.blocks = nn.ModuleList(_BasicBlock(c_in, c_out, 2) for c_in, c_out in itertools.pairwise(widths))
        self.shortcuts = nn.ModuleList(_ZeroPadShortcut(2) for _ in self.blocks)
        self.head_bn = nn.BatchNorm2d(widths[-1])
        self.linear = nn.Linear(widths[-1], 2 * n_units)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                k_h, k_w = m.kernel_size
                nn.init.normal_(m.weight, 0.0, (2.0 / (k_h * k_w * m.out_channels)) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block, shortcut in zip(self.blocks, self.shortcuts):
            x = F.relu(shortcut(x) + block(x))
        x = F.relu(self.head_bn(x)).mean(dim=(2, 3))
        return self.linear(x).view(x.shape[0], self.n_units, 2)


def gumbel_noise(shape, *, device=None, generator=None) -> torch.Tensor:
    """Standard Gumbel samples -log(-log(u + 1e-20) + 1e-20), u ~ U[0, 1) (the reference's epsilons)."""
    u = torch.rand(shape, device=device, generator=generator)
    return -torch.log(-torch.log(u + 1e-20) + 1e-20)


def sample_policy(logits: torch.Tensor, *, temperature: float = DEFAULT_TEMPERATURE, hard_gumbel: bool = True,
                  noise: torch.Tensor | None = None) -> torch.Tensor:
    """Decisions p in {0, 1} of shape (B, n_units) from logits (B, n_units, 2); p = 1 means reuse the frozen unit.

    hard_gumbel=True (training): Gumbel straight-through at fixed `temperature` T: y = softmax((logits + g) / T),
    the forward value is the hard one-hot of argmax y, the backward is the gradient of y (hard - y.detach() + y).
    `noise` replaces the Gumbel draw g (tests). hard_gumbel=False (inference): argmax of the logits, no noise, so
    the same slice always gets the same decisions. Computed in float32 (T = 0.1 sharpens logits 10x).
    """
    logits = logits.float()
    if not hard_gumbel:
        return (logits[..., 1] > logits[..., 0]).float()
    if noise is None:
        noise = gumbel_noise(logits.shape, device=logits.device)
    soft = torch.softmax((logits + noise) / temperature, dim=-1)
    hard = F.one_hot(soft.argmax(dim=-1), 2).to(soft.dtype)
    return (hard - soft.detach() + soft)[..., 1]

