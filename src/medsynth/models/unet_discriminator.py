"""A U-Net discriminator (Schonfeld et al., "A U-Net Based Discriminator for GANs", CVPR 2020).

The encoder is a DCGAN-style stack of strided 4x4 convolutions from the input down to 4x4; a 1x1
convolution on its last features gives a coarse 4x4 map of logits whose mean is the image-level
logit (the paper sums globally pooled features into one logit; a mean of local logits is the same
linear head and also tells where the evidence lies). The optional decoder upsamples back to the
input size, concatenating the encoder's features of each size, and ends in per-pixel logits.

Spectral normalisation on every convolution and no batch norm: the discriminator is called on real,
generated and mixed batches separately, and batch statistics would differ between them (the paper's
BigGAN discriminator is spectrally normalised too). The encoder's features of each size are returned
as well, for the generator's reverse skip connection (`medsynth.models.hagan`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from medsynth.models.dcgan import stage_widths

SLOPE = 0.2
"""Negative slope of the LeakyReLUs (DCGAN's)."""
MIN_DECODER_WIDTH = 4


@dataclass
class DiscriminatorOutput:
    """What `UNetDiscriminator` returns for ``(B, 1, R, R)`` images."""

    image: torch.Tensor
    """``(B,)`` image-level logits (mean of `coarse`)."""
    coarse: torch.Tensor
    """``(B, 1, 4, 4)`` encoder logits per bottleneck cell."""
    pixels: torch.Tensor | None
    """``(B, 1, R, R)`` decoder logits per pixel; None without a decoder."""
    features: list[torch.Tensor]
    """Encoder features ``(B, C_k, R / 2^k, R / 2^k)`` for k = 1 ... log2(R) - 2, i.e. sizes R/2 down to 4."""

    @property
    def local(self) -> torch.Tensor:
        """The finest map of logits there is: `pixels`, or `coarse` without a decoder."""
        return self.pixels if self.pixels is not None else self.coarse


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Module:
    return spectral_norm(nn.Conv2d(in_channels, out_channels, kernel, stride, padding))


class UNetDiscriminator(nn.Module):
    """``(B, 1, R, R)`` images -> `DiscriminatorOutput`; R a power of two, at least 8.

    `channels` is the width at R/2 (doubling at each halving, as `medsynth.models.dcgan`); with
    `decoder` False the network is the encoder alone (image-level and coarse logits only).
    """

    def __init__(self, resolution: int = 64, channels: int = 16, decoder: bool = True) -> None:
        super().__init__()
        widths = stage_widths(resolution, channels)[::-1]  # at R/2, R/4, ..., 4
        self.widths = widths
        self.encoder = nn.ModuleList([_conv(1, widths[0], 4, 2, 1)])
        self.encoder.extend(_conv(w_in, w_out, 4, 2, 1) for w_in, w_out in zip(widths[:-1], widths[1:]))
        self.image_head = _conv(widths[-1], 1, 1)
        self.decoder: nn.ModuleList | None = None
        if decoder:
            # Level k takes the upsampled output of level k + 1 with the encoder's features of its size.
            # Half the encoder's widths: the decoder only localises what the encoder found, and at full
            # width its 3x3 convolutions at the larger sizes would cost four times the encoder.
            out = [max(MIN_DECODER_WIDTH, w // 2) for w in widths]
            into = [*out[1:-1], widths[-1]]  # level k reads level k + 1, the last level the bottleneck
            self.decoder = nn.ModuleList(
                _conv(into[k] + widths[k], out[k], 3, padding=1) for k in range(len(widths) - 1)
            )
            # The full-size level works at R/2 on 2x2 pixel blocks: the input image, rearranged into four
            # channels (its skip), in, a logit for each of the block's four pixels out. Full-size
            # convolutions with a few channels are many times slower per operation on a CPU.
            self.pixel_head = _conv(out[0] + 4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> DiscriminatorOutput:
        features = []
        image = x
        for conv in self.encoder:
            x = F.leaky_relu(conv(x), SLOPE)
            features.append(x)
        coarse = self.image_head(x)
        pixels = None
        if self.decoder is not None:
            for k in reversed(range(len(self.decoder))):
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
                x = F.leaky_relu(self.decoder[k](torch.cat([x, features[k]], dim=1)), SLOPE)
            pixels = F.pixel_shuffle(self.pixel_head(torch.cat([x, F.pixel_unshuffle(image, 2)], dim=1)), 2)
        return DiscriminatorOutput(image=coarse.mean(dim=(1, 2, 3)), coarse=coarse, pixels=pixels, features=features)
