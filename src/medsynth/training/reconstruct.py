"""Reconstructions of an image through the autoencoder of a VQGAN checkpoint, on the image's own grid.

Every 2D plane (the slices of a volume along the checkpoint's slice axis, the frames of a series) is
prepared as in training (normalised with the checkpoint's map, padded to a square with the
background value, resized to the training resolution), encoded to tokens and decoded, then resized
back, cropped to the plane and returned in data units. The reconstruction and its difference
(reconstruction - input, in data units) keep the input's shape, axes, spacing, origin and direction,
so other tools pair them with the input by index; both are marked synthetic. The difference shows
what the codebook cannot represent (plus the resampling to and from the training size).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medsynth.data.datasets import fit_square
from medsynth.errors import InputError
from medsynth.io.image import MedImage
from medsynth.training.checkpoint import Checkpoint, load_checkpoint
from medsynth.training.generate import load_recipe, synthetic_provenance

PLANES_PER_PASS = 16
"""Planes prepared and reconstructed together (the recipe splits them further by pixel count)."""


@dataclass(frozen=True)
class Reconstruction:
    reconstruction: MedImage
    difference: MedImage
    """Reconstruction minus input, in data units."""


def unfit_square(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Undo `medsynth.data.datasets.fit_square`: ``(N, C, S, S)`` -> ``(N, C, H, W)`` of the centred plane."""
    h, w = shape
    side = max(h, w)
    if x.shape[-1] != side:
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    top, left = (side - h) // 2, (side - w) // 2
    return x[..., top : top + h, left : left + w]


def reconstruct(checkpoint: Path | str | Checkpoint, image: MedImage, device: str = "auto") -> Reconstruction:
    """The reconstruction of `image` (grey 2D, 3D or a series) by the autoencoder of a VQGAN `checkpoint`."""
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = load_checkpoint(checkpoint)
    recipe = load_recipe(checkpoint, device)
    if not hasattr(recipe, "reconstruct"):
        raise InputError(
            f"checkpoint {checkpoint.label} is of recipe {checkpoint.recipe!r}, which has no autoencoder; "
            "reconstructions need a vqgan-hdfb or vqgan checkpoint"
        )
    if image.is_rgb or image.is_label:
        kind = "colour" if image.is_rgb else "a label map"
        raise InputError(f"image {image.name!r} is {kind}; give a grey-level image")
    planes, restore = _planes(np.asarray(image.array), image, int(checkpoint.data.get("slice_axis", 0)))
    out = np.empty(planes.shape, dtype=np.float32)
    normalization, side = checkpoint.normalization, recipe.resolution
    for start in range(0, len(planes), PLANES_PER_PASS):
        chunk = planes[start : start + PLANES_PER_PASS]
        batch = torch.stack([fit_square(torch.from_numpy(normalization.apply(p))[None], side) for p in chunk])
        decoded = unfit_square(recipe.reconstruct(batch), chunk.shape[-2:])
        out[start : start + len(chunk)] = normalization.invert(decoded[:, 0].numpy())
    reconstruction = restore(out)
    provenance = synthetic_provenance(checkpoint, None, f"autoencoder reconstruction of {image.name}")
    difference = reconstruction - np.asarray(image.array, dtype=np.float32)
    return Reconstruction(
        image.with_array(reconstruction, synthetic=provenance, name=f"{image.name} reconstruction"),
        image.with_array(difference, synthetic=provenance, name=f"{image.name} reconstruction difference"),
    )


def _planes(array: np.ndarray, image: MedImage, slice_axis: int):
    """``(N, H, W)`` planes of `array` and the function that puts ``(N, H, W)`` results back into its layout."""
    moved = array
    if image.ndim_spatial == 3:
        if slice_axis not in (0, 1, 2):
            raise InputError(f"slice axis {slice_axis} of the checkpoint is not 0, 1 or 2")
        axis = image.axes.index(image.spatial_axes[slice_axis])
        moved = np.moveaxis(array, axis, -3)
    layout = moved.shape

    def restore(planes: np.ndarray) -> np.ndarray:
        result = planes.reshape(layout)
        return np.moveaxis(result, -3, axis) if image.ndim_spatial == 3 else result

    return moved.reshape(-1, *layout[-2:]), restore
