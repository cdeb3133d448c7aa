"""Paired training data: 2D slices of an image and of a target map on the same grid.

The image is normalised to [-1, 1] like every other dataset (`medsynth.data.datasets`); the target
(a danger mask, a lesion label map) keeps its own values. An item is ``(2, S, S)``: channel 0 the
image slice, channel 1 the target slice, both padded to a centred square and resized to ``S``, the
image with the antialiased bilinear filter and the target with nearest neighbours so that mask and
label values stay as they are. Stacking both in one tensor lets the trainer's batching and
augmentation move image and target together; augmentation fills uncovered target pixels with -1 and
blends values at edges, so paired recipes clamp the target to their own range.

Items are the image's slices along `slice_axis` (as in `SliceDataset`) and are skipped on the
image's foreground alone; target slices are read when an item is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medsynth.data.datasets import SliceDataset, as_medimage, target_on_grid
from medsynth.data.normalization import Normalization
from medsynth.errors import InputError
from medsynth.io.image import MedImage


def split_pairs(data: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """``[(image, target), ...]`` -> ``([image, ...], [target, ...])``; InputError for any other item."""
    images, targets = [], []
    for k, item in enumerate(data):
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise InputError(
                f"training item {k} is a {type(item).__name__}, not an (image, target) pair; this recipe trains on "
                "images with target maps: pass [(image, mask), ...] with each mask on its image's grid"
            )
        images.append(item[0])
        targets.append(item[1])
    return images, targets


def fit_square_nearest(x: torch.Tensor, size: int) -> torch.Tensor:
    """Target ``(C, H, W)`` padded with 0 to a centred square (as `fit_square` pads images), resized by nearest neighbours."""
    h, w = x.shape[-2:]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    x = F.pad(x, (left, side - w - left, top, side - h - top), value=0.0)
    if side == size:
        return x
    return F.interpolate(x[None], size=(size, size), mode="nearest-exact")[0]


class PairedSliceDataset(SliceDataset):
    """Items ``(2, size, size)``: the normalised image slice and its unnormalised target slice."""

    def __init__(
        self,
        images: Sequence[MedImage | Any],
        targets: Sequence[MedImage | Any],
        normalization: Normalization,
        size: int,
        **options: Any,
    ) -> None:
        if len(targets) != len(images):
            raise InputError(
                f"{len(images)} image(s) but {len(targets)} target(s); give exactly one target map per image"
            )
        named = [as_medimage(image, name=f"image {k}") for k, image in enumerate(images)]
        self.targets = [
            target_on_grid(image, target, f"target {k}") for k, (image, target) in enumerate(zip(named, targets))
        ]
        super().__init__(named, normalization, size, **options)

    def __getitem__(self, i: int) -> torch.Tensor:
        k, index = self.items[i]
        target = np.asarray(self.targets[k].array[index], dtype=np.float32)
        return torch.cat(
            [
                super().__getitem__(i),
                fit_square_nearest(torch.from_numpy(target)[None], self.size),
            ]
        )
