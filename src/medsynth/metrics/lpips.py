"""LPIPS (Zhang et al. 2018, v0.1, VGG variant): a learned perceptual distance between paired images.

For each of VGG16's layers relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3, the activations of both
images are unit-normalised along channels, their squared difference is weighted per channel by the
published linear layer and averaged over space; the five layer figures are summed. 0 means
identical; larger is more different. It needs two local files (`medsynth.weights`): ``"vgg16"``
(torchvision's ImageNet VGG16) and ``"lpips-vgg"`` (LPIPS' linear layers); `MissingWeightsError`
otherwise: there is no untrained fallback.

Images are mapped from `data_range` to [0, 1], one-channel images are repeated to three channels, and
ImageNet normalisation is applied, which is exactly LPIPS' own input scaling of [-1, 1] images
(shift ``2 * mean - 1``, scale ``2 * std``). 3D volumes are scored on their 2D slices along the first
spatial axis and the slice figures averaged per volume (VGG is a 2D network).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from medsynth.errors import InputError
from medsynth.metrics.inputs import ArrayLike, DataRange, as_pair, to_unit_range
from medsynth.models.vgg import VGGFeatures, load_vgg
from medsynth.weights import load_into, read_state_dict, require_weights

LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
CHANNELS = (64, 128, 256, 512, 512)
# LPIPS' guard against dividing by a zero feature norm.
EPS = 1e-10


class LinearHead(nn.Module):
    """A 1x1 convolution without bias, weighting one layer's channels: ``(B, C, H, W) -> (B, 1, H, W)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        # Slot 0 is a training-time dropout in the published file's network; index 1 keeps its key names.
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPSHeads(nn.Module):
    """The five linear heads, named ``lin0``..``lin4`` as in the published ``vgg.pth``."""

    def __init__(self) -> None:
        super().__init__()
        for i, channels in enumerate(CHANNELS):
            self.add_module(f"lin{i}", LinearHead(channels))


class LPIPS(nn.Module):
    """LPIPS-VGG distance: two ``(B, 1 or 3, H, W)`` batches in [0, 1] -> ``(B,)`` distances."""

    def __init__(self, vgg: VGGFeatures, heads: LPIPSHeads) -> None:
        super().__init__()
        if vgg.depth != 16:
            raise InputError(f"LPIPS v0.1 weights are for VGG16 features, got VGG{vgg.depth}")
        self.vgg = vgg
        self.heads = heads
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = self.vgg(x, LAYERS), self.vgg(y, LAYERS)
        total = torch.zeros(x.shape[0], dtype=fx[LAYERS[0]].dtype, device=x.device)
        for i, name in enumerate(LAYERS):
            a = fx[name] / (fx[name].square().sum(1, keepdim=True).sqrt() + EPS)
            b = fy[name] / (fy[name].square().sum(1, keepdim=True).sqrt() + EPS)
            total = total + getattr(self.heads, f"lin{i}")((a - b).square()).mean((1, 2, 3))
        return total


def load_lpips(path: str | os.PathLike | None = None) -> LPIPS:
    """LPIPS-VGG with the published weights; `path` is a folder holding both files (default: standard places)."""
    file = require_weights("lpips-vgg", path)
    heads = LPIPSHeads()
    # The published file holds only the heads; anything else in it is not ours to judge.
    state = {k: v for k, v in read_state_dict(file).items() if k.startswith("lin")}
    load_into(heads, state, file)
    return LPIPS(load_vgg(16, path), heads)


def lpips(
    real: ArrayLike,
    fake: ArrayLike,
    *,
    data_range: DataRange,
    model: LPIPS | None = None,
    weights: str | os.PathLike | None = None,
    spatial_dims: int | None = None,
    batch_size: int = 16,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """LPIPS distance per item (float64 array of the items' leading shape).

    `model` reuses a loaded `LPIPS`; otherwise it is loaded from the folder `weights` or the standard
    places. 3D items are averaged over their 2D slices.
    """
    r, f, leading = as_pair(real, fake, spatial_dims, device)
    slices_per_item = r.shape[1] if r.ndim == 4 else 1
    r = to_unit_range(r, data_range).reshape(-1, 1, *r.shape[-2:]).float()
    f = to_unit_range(f, data_range).reshape(-1, 1, *f.shape[-2:]).float()
    model = (model if model is not None else load_lpips(weights)).to(r.device)
    with torch.no_grad():
        d = torch.cat(
            [model(r[i : i + batch_size], f[i : i + batch_size]) for i in range(0, r.shape[0], batch_size)]
        )
    return d.reshape(-1, slices_per_item).mean(1).double().cpu().numpy().reshape(leading)
