"""A small 2D U-Net (Ronneberger et al. 2015) mapping an image to per-pixel logits.

Used by the ``danger-unet`` and ``lesion-heatmap`` recipes. Each level is two 3x3 convolutions with
group norm and ReLU; the encoder halves the size with max pooling and doubles the width, the decoder
upsamples bilinearly and concatenates the encoder's features of the same size. Group norm rather
than batch norm because these models train on batches of a few slices, where batch statistics are
noisy and differ between training and prediction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORM_GROUPS = 4


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.GroupNorm(NORM_GROUPS, out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        nn.GroupNorm(NORM_GROUPS, out_channels),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)`` logits; H and W divisible by ``2 ** depth``.

    `width` channels at full resolution (a multiple of 4, for group norm), doubling at each of the
    `depth` halvings.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        width: int = 16,
        depth: int = 3,
    ) -> None:
        super().__init__()
        if width % NORM_GROUPS or width < NORM_GROUPS:
            raise ValueError(f"U-Net width {width} must be a positive multiple of {NORM_GROUPS}")
        if depth < 1:
            raise ValueError(f"U-Net depth {depth} must be at least 1")
        widths = [width * 2**level for level in range(depth + 1)]
        self.depth = depth
        self.encoder = nn.ModuleList([_block(in_channels, widths[0])])
        self.encoder.extend(_block(widths[level], widths[level + 1]) for level in range(depth))
        self.decoder = nn.ModuleList(_block(widths[level + 1] + widths[level], widths[level]) for level in range(depth))
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``."""
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for level in reversed(range(self.depth)):
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = self.decoder[level](torch.cat([x, skip], dim=1))
        return self.head(x)
