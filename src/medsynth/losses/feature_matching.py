"""Feature matching (Salimans et al. 2016): generated data should excite the discriminator like real data."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medsynth.errors import InputError


def feature_matching_loss(real: Sequence[torch.Tensor], fake: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of ``mean((E_batch f(real) - E_batch f(fake))^2)``.

    `real` and `fake` are the discriminator's activations ``(N, ...)`` at the same layers; the real
    ones should be detached. Batch means are compared (not individual samples), as in the paper, and
    each layer's squared distance is divided by its number of elements so that wide layers do not
    dominate.
    """
    if len(real) != len(fake) or not real:
        raise InputError(f"feature matching needs the same non-zero number of layers, got {len(real)} and {len(fake)}")
    terms = [(r.mean(dim=0) - f.mean(dim=0)).pow(2).mean() for r, f in zip(real, fake)]
    return torch.stack(terms).mean()
