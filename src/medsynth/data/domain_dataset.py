"""Training items of two domains: one slice of each, each in its own domain's intensity map.

The two domains (`medsynth.data.domains.TwoDomains`) keep separate intensity maps, because they are
in different units (HU and MR intensity, an image and a probability map). An item of
`DomainPairDataset` is ``(2, S, S)``: channel 0 a slice of A, channel 1 a slice of B, each normalised
to [-1, 1] with its domain's map and prepared as `SliceDataset` prepares slices.

- Registered domains (image fusion): ``a[k]`` and ``b[k]`` lie on one grid, and an item is the same
  plane of both. Planes are chosen by A's foreground alone, so both channels always match.
- Unregistered domains (unpaired translation): the sets have any sizes, and the B slice of an item
  is drawn at random from torch's global generator, independently of the A slice, so no pairing is
  learned; the trainer seeds that generator per step, which keeps a run reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from medsynth.data.datasets import SliceDataset, as_medimage, target_on_grid
from medsynth.data.domains import TwoDomains
from medsynth.data.normalization import Normalization
from medsynth.errors import InputError


class DomainPairDataset:
    """Items ``(2, size, size)``: a normalised slice of domain A and one of domain B; see the module docstring."""

    def __init__(
        self,
        domains: TwoDomains,
        normalizations: tuple[Normalization, Normalization],
        size: int,
        *,
        registered: bool,
        **options: Any,
    ) -> None:
        self.registered = registered
        self.a = SliceDataset(domains.a, normalizations[0], size, **options)
        if registered:
            b_images = _on_a_grids(self.a.images, domains.b)
            # Every plane of B, so that each plane A keeps has its partner (A's foreground decides).
            self.b = SliceDataset(b_images, normalizations[1], size, **{**options, "min_foreground": 0.0})
            # Index tuples hold slices, which are not hashable before Python 3.12: key them by repr.
            position = {repr(item): i for i, item in enumerate(self.b.items)}
            self._partner = [position[repr(item)] for item in self.a.items]
        else:
            self.b = SliceDataset(domains.b, normalizations[1], size, **options)
        self.size = size

    @property
    def normalizations(self) -> tuple[Normalization, Normalization]:
        return self.a.normalization, self.b.normalization

    def __len__(self) -> int:
        return len(self.a) if self.registered else max(len(self.a), len(self.b))

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.registered:
            return torch.cat([self.a[i], self.b[self._partner[i]]])
        j = int(torch.randint(len(self.b), ()))
        return torch.cat([self.a[i % len(self.a)], self.b[j]])

    @property
    def pixel_spacing(self) -> tuple[float, float]:
        return self.a.pixel_spacing

    def describe(self) -> dict[str, Any]:
        """Domain A's description (as any dataset's), with domain B's under ``"b"`` and the pairing."""
        return {**self.a.describe(), "registered": self.registered, "b": self.b.describe()}


def _on_a_grids(a_images: list[Any], b: Sequence[Any]) -> list[Any]:
    """B's images, each checked to lie on the grid of its A partner (co-registered pairs)."""
    if len(b) != len(a_images):
        raise InputError(
            f"{len(a_images)} domain-A image(s) but {len(b)} domain-B image(s); this recipe fuses co-registered pairs: "
            "give one B image per A image, in the same order"
        )
    return [
        target_on_grid(image, as_medimage(other, name=f"domain-B image {k}"), f"domain-B image {k}")
        for k, (image, other) in enumerate(zip(a_images, b))
    ]
