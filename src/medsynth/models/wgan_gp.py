"""The WGAN-GP critic and gradient penalty (Gulrajani et al., "Improved Training of Wasserstein GANs", 2017).

The critic is the DCGAN discriminator without batch norm (layer norm or none, as the paper advises,
because the penalty is computed per sample) and with an unbounded score instead of a logit. The
generator is the DCGAN generator.
"""

from __future__ import annotations

import torch
from torch import nn

from medsynth.models.dcgan import DCGANDiscriminator


class Critic(DCGANDiscriminator):
    """``(B, 1, R, R)`` images -> ``(B,)`` critic scores; `norm` is ``"layer"`` or ``"none"``."""

    def __init__(self, resolution: int = 64, channels: int = 32, norm: str = "layer") -> None:
        if norm == "batch":
            raise ValueError("a WGAN-GP critic must not use batch norm; use norm='layer' or 'none'")
        super().__init__(resolution, channels, norm)


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """``E[(||grad_x critic(x)||_2 - 1)^2]`` at random points ``x`` between `real` and `fake` ``(B, C, H, W)``.

    The result keeps its graph (``create_graph=True``) so that it can be added to the critic loss.
    """
    alpha = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    scores = critic(mixed)
    (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()
