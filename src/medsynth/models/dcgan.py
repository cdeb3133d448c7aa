"""DCGAN generator and discriminator (Radford et al., 2016) for one-channel square images.

The generator maps a latent vector through transposed convolutions (stride 2, kernel 4) with batch
norm and ReLU from 4x4 up to the output size, ending in tanh; the discriminator mirrors it with
strided convolutions and LeakyReLU(0.2), batch norm on every layer but the first, and returns one
logit per image. Channel widths double at each halving of the resolution, starting from `channels`
at full resolution.
"""

from __future__ import annotations

import math

import torch
from torch import nn

NORMS = ("batch", "layer", "none")


def stage_widths(resolution: int, channels: int) -> list[int]:
    """Channel widths from 4x4 up to ``resolution / 2``: e.g. 64 px, 32 ch -> [256, 128, 64, 32]."""
    if resolution < 8 or resolution & (resolution - 1):
        raise ValueError(f"resolution {resolution} must be a power of two, at least 8")
    stages = int(math.log2(resolution)) - 2
    return [channels * 2 ** (stages - 1 - k) for k in range(stages)]


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights N(0, 0.02); norm scales N(1, 0.02), biases 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(width)
    if kind == "layer":
        return nn.GroupNorm(1, width)  # one group: normalises over (C, H, W) per image, i.e. layer norm
    return nn.Identity()


class DCGANGenerator(nn.Module):
    """``(B, latent_dim)`` latent vectors -> ``(B, 1, resolution, resolution)`` images in [-1, 1]."""

    def __init__(self, resolution: int = 64, latent_dim: int = 100, channels: int = 32) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        widths = stage_widths(resolution, channels)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, widths[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(True),
        ]
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.ConvTranspose2d(w_in, w_out, 4, 2, 1, bias=False), nn.BatchNorm2d(w_out), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[-1], 1, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z[:, :, None, None])


class DCGANDiscriminator(nn.Module):
    """``(B, 1, resolution, resolution)`` images -> ``(B,)`` real/fake logits (or critic scores).

    `norm` is ``"batch"`` for DCGAN; a WGAN-GP critic must not use batch norm (the gradient penalty is
    per sample), so it takes ``"layer"`` or ``"none"``.
    """

    def __init__(self, resolution: int = 64, channels: int = 32, norm: str = "batch") -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm {norm!r} is not one of {NORMS}")
        widths = stage_widths(resolution, channels)[::-1]
        layers: list[nn.Module] = [nn.Conv2d(1, widths[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [
                nn.Conv2d(w_in, w_out, 4, 2, 1, bias=norm == "none"),
                _norm(norm, w_out),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(widths[-1], 1, 4, 1, 0))
        self.main = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).flatten()
