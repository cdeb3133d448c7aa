"""The content loss of GAN image fusion: keep source A's intensities and the stronger edges of the two sources.

For a fused image ``F`` of co-registered sources ``A`` and ``B`` (all ``(B, 1, H, W)`` in [-1, 1])::

    L_content = mean((F - A)^2) + gradient_weight * mean_d mean(| d F - pick(d A, d B) |)

over the Sobel derivatives ``d`` along x and along y, where ``pick`` takes at every pixel the source
derivative of the larger magnitude, with its sign. The intensity term is FusionGAN's and DDcGAN's
(Ma et al. 2019, 2020): the fused image keeps the units and contrast of the anatomical source A.
Their gradient term followed one source's gradients; taking the stronger of the two at every pixel,
as later fusion losses do, keeps the edges of whichever source has them there. The sign matters:
later losses compare magnitudes ``|d/dx| + |d/dy|`` only, but two modalities may show one boundary
with opposite polarity (the grey/white matter boundary is dark-to-bright in a T1 and bright-to-dark
in a grey-matter map), and a magnitude target lets the fused image take B's edges with A's polarity,
which carries none of B (its SCD falls below that of A alone).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Sobel kernels for d/dx and d/dy, stacked as the two output channels of one convolution.
_SOBEL = torch.tensor(
    [[[[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]], [[[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]]]]
)


def sobel(images: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` -> ``(B, 2, H, W)``: the Sobel derivatives along x and y, border pixels replicated."""
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(padded, _SOBEL.to(images), padding=0)


def content_terms(fused: torch.Tensor, source_a: torch.Tensor, source_b: torch.Tensor) -> dict[str, torch.Tensor]:
    """The two terms of ``L_content`` by name: ``intensity`` (to A) and ``gradient`` (to the stronger source edge)."""
    grad_a, grad_b = sobel(source_a), sobel(source_b)
    target = torch.where(grad_a.abs() >= grad_b.abs(), grad_a, grad_b)
    return {
        "intensity": F.mse_loss(fused, source_a),
        "gradient": F.l1_loss(sobel(fused), target),
    }
