"""The PatchGAN discriminator (Isola et al. 2017) of VQGAN and CycleGAN: one logit per overlapping image patch.

``(B, 1, H, W)`` -> ``(B, 1, h, w)``: a 4x4 stride-2 convolution with LeakyReLU(0.2), `layers - 1`
more 4x4 stride-2 convolutions with batch norm, one 4x4 stride-1 convolution with batch norm, and a
4x4 stride-1 convolution to one channel. Widths double per layer from `channels`, capped at 8x.
``norm="instance"`` takes instance norm instead, as CycleGAN's discriminators do (Zhu et al. 2017
train on single images, whose batch statistics would be those of one image). With 3 layers each
logit sees a 70 x 70 pixel patch. `activations` also returns the LeakyReLU outputs, which the
weight-free perceptual fallback of `medsynth.losses.vqperceptual` compares.
"""

from __future__ import annotations

import torch
from torch import nn

MAX_WIDTH_FACTOR = 8
NORMS = {"batch": nn.BatchNorm2d, "instance": nn.InstanceNorm2d}


class PatchDiscriminator(nn.Module):
    """See the module docstring; images need a side of at least ``2 ** (layers + 2)`` pixels."""

    def __init__(self, channels: int = 64, layers: int = 3, norm: str = "batch") -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm {norm!r} is not one of {tuple(NORMS)}")
        widths = [channels * min(2**n, MAX_WIDTH_FACTOR) for n in range(layers + 1)]
        stages: list[nn.Module] = [nn.Sequential(nn.Conv2d(1, widths[0], 4, 2, 1), nn.LeakyReLU(0.2))]
        for n in range(1, layers + 1):
            stride = 2 if n < layers else 1
            stages.append(
                nn.Sequential(
                    nn.Conv2d(widths[n - 1], widths[n], 4, stride, 1, bias=False),
                    NORMS[norm](widths[n]),
                    nn.LeakyReLU(0.2),
                )
            )
        self.stages = nn.ModuleList(stages)
        self.head = nn.Conv2d(widths[-1], 1, 4, 1, 1)

    def activations(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(logits (B, 1, h, w), [activation (B, C_l, H_l, W_l) per stage])``."""
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return self.head(x), features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activations(x)[0]
