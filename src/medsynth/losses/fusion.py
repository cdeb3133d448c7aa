"""The content loss of GAN image fusion: keep source A's intensities and the stronger edges of the two sources.

For a fused image ``F`` of co-registered sources ``A`` and ``B`` (all ``(B, 1, H, W)`` in [-1, 1])::

    L_content = mean((F - A)^2) + gradient_weight * mean(| g(F) - max(g(A), g(B)) |)

with ``g`` the Sobel gradient magnitude ``|d/dx| + |d/dy|``. The intensity term is FusionGAN's and
DDcGAN's (Ma et al. 2019, 2020): the fused image keeps the units and contrast of the anatomical
source A. Their gradient term followed one source's gradients; taking the larger gradient of the two
at every pixel, as later fusion losses do, keeps the edges of whichever source has them there (the
grey-matter boundaries of a tissue map where the T1 shows them faintly).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Sobel kernels for d/dx and d/dy, stacked as the two output channels of one convolution.
_SOBEL = torch.tensor(
    [[[[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]], [[[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]]]]
)


def gradient_magnitude(images: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` -> ``(B, 1, H, W)``: ``|d/dx| + |d/dy|`` of the Sobel filters, border pixels replicated."""
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(padded, _SOBEL.to(images), padding=0).abs().sum(1, keepdim=True)


def content_terms(fused: torch.Tensor, source_a: torch.Tensor, source_b: torch.Tensor) -> dict[str, torch.Tensor]:
    """The two terms of ``L_content`` by name: ``intensity`` (to A) and ``gradient`` (to the larger source gradient)."""
    target = torch.maximum(gradient_magnitude(source_a), gradient_magnitude(source_b))
    return {
        "intensity": F.mse_loss(fused, source_a),
        "gradient": F.l1_loss(gradient_magnitude(fused), target),
    }
