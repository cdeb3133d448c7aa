"""The ResNet image-to-image generator of CycleGAN (Zhu et al. 2017, after Johnson et al. 2016).

``(B, 1, H, W)`` in [-1, 1] -> ``(B, 1, H, W)`` in [-1, 1], H and W multiples of 4:

    reflection pad 3, 7x7 conv to `channels`, instance norm, ReLU
    2 x (3x3 stride-2 conv, doubling the width, instance norm, ReLU)       # H/4 x W/4, 4 * channels
    `blocks` x residual block (reflection pad 1, 3x3 conv, IN, ReLU, reflection pad 1, 3x3 conv, IN)
    2 x (3x3 stride-2 transposed conv, halving the width, instance norm, ReLU)
    reflection pad 3, 7x7 conv to 1 channel, tanh

The paper uses 64 channels with 6 blocks for 128 px images and 9 blocks for 256 px. Instance norm
has no learned scale or shift and keeps no running statistics (as in the authors' code), so a
generator behaves the same in training and evaluation and on any batch size. Weights start
N(0, 0.02) (`medsynth.models.dcgan.init_weights`).
"""

from __future__ import annotations

import torch
from torch import nn

from medsynth.models.dcgan import init_weights

DOWNSAMPLINGS = 2
"""Stride-2 stages on each side of the residual blocks: sides must be multiples of 2 ** DOWNSAMPLINGS."""


class ResidualBlock(nn.Module):
    """``(B, C, H, W)`` -> ``x + F(x)``, F two reflection-padded 3x3 convolutions with instance norm."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(width, width, 3),
            nn.InstanceNorm2d(width),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(width, width, 3),
            nn.InstanceNorm2d(width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNetGenerator(nn.Module):
    """See the module docstring; `channels` is the width at full resolution, `blocks` the residual blocks."""

    def __init__(self, channels: int = 64, blocks: int = 9) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(1, channels, 7),
            nn.InstanceNorm2d(channels),
            nn.ReLU(True),
        ]
        width = channels
        for _ in range(DOWNSAMPLINGS):
            layers += [nn.Conv2d(width, 2 * width, 3, 2, 1), nn.InstanceNorm2d(2 * width), nn.ReLU(True)]
            width *= 2
        layers += [ResidualBlock(width) for _ in range(blocks)]
        for _ in range(DOWNSAMPLINGS):
            layers += [
                nn.ConvTranspose2d(width, width // 2, 3, 2, 1, output_padding=1),
                nn.InstanceNorm2d(width // 2),
                nn.ReLU(True),
            ]
            width //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, 1, 7), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = 2**DOWNSAMPLINGS
        if x.shape[-1] % side or x.shape[-2] % side:
            raise ValueError(f"image size {tuple(x.shape[-2:])} must be a multiple of {side} on both sides")
        return self.main(x)
