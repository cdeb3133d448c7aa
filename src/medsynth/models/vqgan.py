"""The VQGAN autoencoder (Esser et al. 2021) for one-channel images, with HDFB or plain residual blocks.

Encoder: ``(B, 1, S, S)`` -> conv 3x3 -> four resolution levels of `blocks` blocks each, with a
downsampling by `factor` after each of the first three (three downsamplings: ``S / factor**3``
tokens per side) -> two middle blocks -> GroupNorm -> SiLU -> conv 3x3 to `codebook_dim` channels
-> 1x1 conv -> vector quantiser (`medsynth.models.quantizer`). The decoder mirrors it: 1x1 conv ->
conv 3x3 -> two middle blocks -> four levels with an upsampling by `factor` before each of the
last three -> GroupNorm -> SiLU -> conv 3x3 to one channel (the "last layer" of the adaptive
adversarial weight). Level ``i`` has ``base_channels * channel_mult[i]`` channels.

With `factor` 4 a 1,024 px image becomes 16 x 16 tokens (the paper's grid); with 2, a 128 px image
does. A downsampling by 4 is two stride-2 3x3 convolutions, an upsampling by 4 two rounds of
nearest-neighbour doubling and a 3x3 convolution.

`block` chooses the block: ``"hdfb"`` (`medsynth.models.hdfb.HDFB`) or ``"resblock"`` (taming's
residual block: GroupNorm -> SiLU -> conv 3x3 -> GroupNorm -> SiLU -> conv 3x3, plus the input).
Unlike taming, no attention layer is used at the lowest resolution: the paper names none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from medsynth.models.hdfb import DEFAULT_KERNELS, HDFB, group_norm
from medsynth.models.quantizer import Quantized, VectorQuantizer

BLOCKS = ("hdfb", "resblock")
LEVELS = 4
"""Resolution levels of the encoder and decoder (three downsamplings between them)."""
MIDDLE_BLOCKS = 2


class ResBlock(nn.Module):
    """Plain residual block: ``(B, C_in, H, W) -> (B, C_out, H, W)``, a 1x1 shortcut when widths differ."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm = group_norm(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.act = nn.SiLU()
        self.shortcut = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(self.act(self.norm(x)))
        return self.shortcut(x) + self.conv2(self.act(self.norm2(h)))


def make_block(
    kind: str,
    in_channels: int,
    out_channels: int,
    kernel_sizes: Sequence[int] = DEFAULT_KERNELS,
    drop_path: float = 0.0,
) -> nn.Module:
    """An HDFB or a plain residual block (`BLOCKS`)."""
    if kind == "hdfb":
        return HDFB(in_channels, out_channels, kernel_sizes, drop_path)
    if kind == "resblock":
        return ResBlock(in_channels, out_channels)
    raise ValueError(f"block {kind!r} is not one of {BLOCKS}")


def _halvings(factor: int) -> int:
    if factor < 2 or factor & (factor - 1):
        raise ValueError(f"stage factor {factor} must be a power of two, at least 2")
    return int(math.log2(factor))


class Downsample(nn.Module):
    """``(B, C, H, W) -> (B, C, H / factor, W / factor)`` by stride-2 3x3 convolutions."""

    def __init__(self, channels: int, factor: int) -> None:
        super().__init__()
        halvings = range(_halvings(factor))
        self.convs = nn.Sequential(*(nn.Conv2d(channels, channels, 3, stride=2, padding=1) for _ in halvings))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


class Upsample(nn.Module):
    """``(B, C, H, W) -> (B, C, H * factor, W * factor)``: nearest-neighbour doublings, each with a 3x3 conv."""

    def __init__(self, channels: int, factor: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(_halvings(factor)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


def level_channels(base_channels: int, channel_mult: Sequence[int]) -> list[int]:
    if len(channel_mult) != LEVELS:
        raise ValueError(f"channel multipliers {tuple(channel_mult)} must give one value per level ({LEVELS})")
    return [base_channels * m for m in channel_mult]


class VQEncoder(nn.Module):
    """``(B, 1, S, S)`` -> ``(B, codebook_dim, S / factor**3, S / factor**3)`` (before quantisation)."""

    def __init__(
        self,
        block: str,
        base_channels: int,
        channel_mult: Sequence[int],
        blocks: int,
        factor: int,
        codebook_dim: int,
        kernel_sizes: Sequence[int] = DEFAULT_KERNELS,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        widths = level_channels(base_channels, channel_mult)
        self.conv_in = nn.Conv2d(1, widths[0], 3, padding=1)
        layers: list[nn.Module] = []
        width = widths[0]
        for level, out in enumerate(widths):
            for _ in range(blocks):
                layers.append(make_block(block, width, out, kernel_sizes, drop_path))
                width = out
            if level < LEVELS - 1:
                layers.append(Downsample(width, factor))
        layers += [make_block(block, width, width, kernel_sizes, drop_path) for _ in range(MIDDLE_BLOCKS)]
        self.body = nn.Sequential(*layers)
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, codebook_dim, 3, padding=1)
        self.quant_conv = nn.Conv2d(codebook_dim, codebook_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(self.conv_in(x))
        return self.quant_conv(self.conv_out(nn.functional.silu(self.norm_out(h))))


class VQDecoder(nn.Module):
    """``(B, codebook_dim, s, s)`` quantised vectors -> ``(B, 1, s * factor**3, s * factor**3)`` images."""

    def __init__(
        self,
        block: str,
        base_channels: int,
        channel_mult: Sequence[int],
        blocks: int,
        factor: int,
        codebook_dim: int,
        kernel_sizes: Sequence[int] = DEFAULT_KERNELS,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        widths = level_channels(base_channels, channel_mult)
        width = widths[-1]
        self.post_quant_conv = nn.Conv2d(codebook_dim, codebook_dim, 1)
        self.conv_in = nn.Conv2d(codebook_dim, width, 3, padding=1)
        layers = [make_block(block, width, width, kernel_sizes, drop_path) for _ in range(MIDDLE_BLOCKS)]
        for level in reversed(range(LEVELS)):
            for _ in range(blocks):
                layers.append(make_block(block, width, widths[level], kernel_sizes, drop_path))
                width = widths[level]
            if level > 0:
                layers.append(Upsample(width, factor))
        self.body = nn.Sequential(*layers)
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, 1, 3, padding=1)

    @property
    def last_layer(self) -> torch.Tensor:
        """The weight of the output convolution, where the adaptive adversarial weight compares gradients."""
        return self.conv_out.weight

    def forward(self, z_q: torch.Tensor) -> torch.Tensor:
        h = self.body(self.conv_in(self.post_quant_conv(z_q)))
        return self.conv_out(nn.functional.silu(self.norm_out(h)))


class VQAutoencoder(nn.Module):
    """Encoder, quantiser and decoder: ``(B, 1, S, S)`` -> ``(reconstruction (B, 1, S, S), Quantized)``."""

    def __init__(
        self,
        block: str = "hdfb",
        base_channels: int = 32,
        channel_mult: Sequence[int] = (1, 2, 4, 4),
        blocks: int = 1,
        factor: int = 2,
        codebook_size: int = 1024,
        codebook_dim: int = 256,
        kernel_sizes: Sequence[int] = DEFAULT_KERNELS,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.factor = factor
        options = (block, base_channels, channel_mult, blocks, factor, codebook_dim, kernel_sizes, drop_path)
        self.encoder = VQEncoder(*options)
        self.quantizer = VectorQuantizer(codebook_size, codebook_dim)
        self.decoder = VQDecoder(*options)

    @property
    def downsampling(self) -> int:
        """Image pixels per token along each side (``factor ** 3``)."""
        return self.factor ** (LEVELS - 1)

    def encode(self, x: torch.Tensor) -> Quantized:
        return self.quantizer(self.encoder(x))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """``(B, h, w)`` token maps -> ``(B, 1, h * downsampling, w * downsampling)`` images."""
        return self.decoder(self.quantizer.lookup(indices))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Quantized]:
        quantized = self.encode(x)
        return self.decoder(quantized.z_q), quantized
