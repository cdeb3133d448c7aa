"""The hierarchical dual-path fusion block (HDFB) of HiResMed-VQGAN, with its multi-scale feature extractor.

One HDFB maps ``(B, C_in, H, W)`` to ``(B, C_out, H, W)`` as ``Y = X + F(X)``, where

    F = GroupNorm -> SiLU -> conv 3x3 -> GroupNorm -> SiLU -> MSConvFE

and ``X`` goes through a 1x1 convolution when ``C_in != C_out``. The two paths are the identity
path and ``F``; within ``F`` the multi-scale convolutional feature extractor (MSConvFE) is

    MSConvFE = GroupNorm -> conv 1x1 -> GELU -> sum over k of DWSep_k -> DropPath

where ``DWSep_k`` is a depth-wise ``k x k`` convolution followed by a point-wise 1x1 convolution,
for every kernel size ``k`` (3, 5 and 7 by default), and the branches are fused by element-wise
addition. DropPath drops the whole residual branch of a sample during training (stochastic depth),
so that at that sample the block is the identity. docs/vqgan-hdfb.md explains the choices the paper
leaves open (the 1x1 conv, the kernel sizes, the drop rate).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

MAX_GROUPS = 32
DEFAULT_KERNELS = (3, 5, 7)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with groups of at least 4 channels and at most 32 groups (taming's 32 from 128 channels up)."""
    return nn.GroupNorm(math.gcd(MAX_GROUPS, max(1, channels // 4)), channels, eps=1e-6)


class DropPath(nn.Module):
    """Stochastic depth: zero a sample's whole input with probability `rate` in training, rescale the rest.

    ``(B, ...) -> (B, ...)``; the identity in eval mode or at rate 0. The draws come from torch's
    global generator, which the trainer seeds per step.
    """

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop path rate {rate} must be in [0, 1)")
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device, dtype=x.dtype).bernoulli_(keep)
        return x * mask / keep


class DepthwiseSeparableConv(nn.Module):
    """A depth-wise ``k x k`` convolution then a point-wise 1x1 one: ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel size {kernel_size} must be odd so that the output keeps its size")
        self.depthwise = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        self.pointwise = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class MSConvFE(nn.Module):
    """Multi-scale convolutional feature extractor: ``(B, C, H, W) -> (B, C, H, W)`` (see the module docstring)."""

    def __init__(self, channels: int, kernel_sizes: Sequence[int] = DEFAULT_KERNELS, drop_path: float = 0.0) -> None:
        super().__init__()
        if not kernel_sizes:
            raise ValueError("MSConvFE needs at least one kernel size")
        self.norm = group_norm(channels)
        self.mix = nn.Conv2d(channels, channels, 1)
        self.act = nn.GELU()
        self.branches = nn.ModuleList(DepthwiseSeparableConv(channels, k) for k in kernel_sizes)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.mix(self.norm(x)))
        fused = self.branches[0](h)
        for branch in self.branches[1:]:
            fused = fused + branch(h)
        return self.drop_path(fused)


class HDFB(nn.Module):
    """Hierarchical dual-path fusion block: ``(B, C_in, H, W) -> (B, C_out, H, W)``, ``Y = X + F(X)``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_sizes: Sequence[int] = DEFAULT_KERNELS,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm = group_norm(in_channels)
        self.act = nn.SiLU()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.msconvfe = MSConvFE(out_channels, kernel_sizes, drop_path)
        self.shortcut = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv(self.act(self.norm(x)))
        f = self.msconvfe(self.act(self.norm2(f)))
        return self.shortcut(x) + f
