"""On-the-fly augmentation of normalised batches: random flips and small affine transforms.

Applied per batch on the training device. Random numbers come from torch's global CPU generator,
which the trainer seeds per step, so runs stay reproducible and resumable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def augment_batch(
    batch: torch.Tensor,
    *,
    flip_probability: float = 0.5,
    max_rotation_deg: float = 5.0,
    max_scale: float = 0.05,
    max_shift: float = 0.03,
) -> torch.Tensor:
    """Flip left-right, rotate, scale and shift each item of ``(B, C, H, W)`` or ``(B, 1, T, H, W)``.

    All frames of a clip get the same transform. Uncovered pixels take the background value -1.
    `max_shift` is a fraction of the image side.
    """
    shape = batch.shape
    images = batch.reshape(shape[0], -1, *shape[-2:])
    n = images.shape[0]
    flip = torch.where(torch.rand(n) < flip_probability, -1.0, 1.0)
    angle = (torch.rand(n) * 2 - 1) * math.radians(max_rotation_deg)
    scale = 1.0 + (torch.rand(n) * 2 - 1) * max_scale
    shift = (torch.rand(n, 2) * 2 - 1) * (2 * max_shift)  # grid coordinates span 2 per side
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, shift[:, 0]], dim=1), torch.stack([sin * flip, cos, shift[:, 1]], dim=1)],
        dim=1,
    ).to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # Sampling (x + 1) with zero padding and subtracting 1 fills uncovered pixels with -1.
    out = F.grid_sample(images + 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1.0
    return out.reshape(shape)
