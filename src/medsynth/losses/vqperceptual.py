"""The losses of VQGAN's autoencoder stage: L1 + perceptual, patch adversarial with an adaptive weight.

Autoencoder (Esser et al. 2021, eq. 5-7, with the quantiser's terms from `medsynth.models.quantizer`)::

    L = rec_weight * |x - x_hat|_1 + perceptual_weight * P(x, x_hat)
        + f(step) * lambda * (-mean D(x_hat))
        + codebook_weight * (codebook + beta * commitment)

    lambda = disc_weight * ||grad_{G_L} (L1 + P)|| / (||grad_{G_L} (-mean D(x_hat))|| + 1e-4)

where ``G_L`` is the decoder's last layer, lambda is clamped to [0, 1e4] and not differentiated,
and ``f(step)`` is 0 before `disc_start` (the adversarial warm-up) and 1 after. The discriminator
minimises the hinge loss ``0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))``.

The perceptual distance ``P`` compares feature maps of a network (`PERCEPTUAL`, built by the recipe
from these functions):

- ``"vgg16"``: LPIPS-style on VGG16 (`features_distance` of `medsynth.losses.dtcr.vgg_features` at
  `LPIPS_LAYERS`): at relu1_2 ... relu5_3 each pixel's feature vector is scaled to unit length, and
  the squared distance of the two vectors (summed over channels, as LPIPS with every channel weight
  1) is averaged over the pixels, then over the layers; needs the ``vgg16`` weight file.
- ``"discriminator"``: the weight-free fallback, the same formula on the patch discriminator's
  stage activations (`paired_activations_distance`: both images in one batch, so that batch norm
  treats them alike). These features change as the discriminator learns (a moving target) and are
  random features during the warm-up; the fallback is meant for machines without the VGG file and
  for tests.
- ``"off"``: no perceptual term.

As for DTCR (`medsynth.losses.dtcr`, docs/hrgan-dtcr.md) nothing falls back silently: asking for
VGG features without the file raises `MissingWeightsError` before training, naming where to put it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from medsynth.losses.dtcr import FeatureFn, unit_channels

PERCEPTUAL = ("vgg16", "discriminator", "off")
LPIPS_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
ADAPTIVE_WEIGHT_MAX = 1e4
ADAPTIVE_EPS = 1e-4

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""Maps two ``(B, 1, H, W)`` batches in [-1, 1] to a scalar distance that gradients flow through."""


def feature_distance(fx: Sequence[torch.Tensor], fy: Sequence[torch.Tensor]) -> torch.Tensor:
    """LPIPS-style distance of two lists of activations ``(B, C_l, H_l, W_l)`` (see the module docstring)."""
    per_layer = [(unit_channels(a) - unit_channels(b)).pow(2).sum(dim=1).mean() for a, b in zip(fx, fy)]
    return torch.stack(per_layer).mean()


def features_distance(features: FeatureFn) -> Distance:
    """`feature_distance` of the two batches' features from `features` (a frozen network)."""
    return lambda x, y: feature_distance(features(x), features(y))


Activations = Callable[[torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]
"""A discriminator's ``(logits, [stage activation])`` of a batch (`PatchDiscriminator.activations`)."""


def paired_activations_distance(activations: Activations) -> Distance:
    """`feature_distance` of the stage activations of both batches, computed in one batch (``(logits, [stage])``)."""

    def distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _, features = activations(torch.cat([x, y]))
        return feature_distance(*zip(*(f.chunk(2) for f in features)))

    return distance


def hinge_discriminator_loss(
    logits_real: torch.Tensor, logits_fake: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, real term, fake term)`` of the hinge loss; the loss is half the sum of the terms."""
    real = F.relu(1.0 - logits_real).mean()
    fake = F.relu(1.0 + logits_fake).mean()
    return 0.5 * (real + fake), real, fake


def adaptive_weight(nll: torch.Tensor, adversarial: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """``||grad nll|| / (||grad adversarial|| + 1e-4)`` at `last_layer`, clamped to [0, 1e4], without gradient."""
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    adv_grad = torch.autograd.grad(adversarial, last_layer, retain_graph=True)[0]
    ratio = nll_grad.norm() / (adv_grad.norm() + ADAPTIVE_EPS)
    return ratio.clamp(0.0, ADAPTIVE_WEIGHT_MAX).detach()
