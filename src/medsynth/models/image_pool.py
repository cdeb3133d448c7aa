"""The history of generated images that CycleGAN's discriminators learn from (Shrivastava et al. 2017).

A discriminator that only sees the generator's latest images can chase it in circles; showing it a
mix of the latest and earlier generated images damps that oscillation. `ImagePool.query` takes a
batch of new generated images and returns a batch of the same size: while the pool fills, each new
image is stored and returned; once it holds `size` images, each new image is, with probability 1/2,
returned as it is, and otherwise swapped for a random stored one, which it replaces in the pool.
Zhu et al. 2017 use a pool of 50.
"""

from __future__ import annotations

import torch


class ImagePool:
    """A pool of up to `size` generated images ``(C, H, W)``; `size` 0 returns every batch unchanged."""

    def __init__(self, size: int = 50) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []

    @torch.no_grad()
    def query(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` new generated images -> ``(B, C, H, W)`` images for the discriminator.

        Random draws come from torch's global generator, which the trainer seeds per step, so that
        resumed runs repeat them.
        """
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif float(torch.rand(())) < 0.5:
                k = int(torch.randint(len(self.images), ()))
                out.append(self.images[k])
                self.images[k] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)

    def state(self) -> torch.Tensor | None:
        """The stored images ``(n, C, H, W)`` (for checkpoints), or None while the pool is empty."""
        return torch.stack(self.images) if self.images else None

    def load(self, state: torch.Tensor | None) -> None:
        self.images = [] if state is None else [image.clone() for image in state]
