"""Predictions of the learned lesion models: the danger zone (``danger-unet``) and the location heatmap (``lesion-heatmap``).

Both load an engine checkpoint (`medsynth.training.checkpoint`), normalise the image as the
training data was normalised, run the U-Net on each 2D slice padded to a square at the training
resolution (as `medsynth.data.datasets.fit_square` prepares training items), and map the
probabilities back onto the image's own grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medsynth.data.datasets import fit_square
from medsynth.errors import CheckpointError, InputError
from medsynth.io.image import MedImage
from medsynth.training.checkpoint import Checkpoint, load_checkpoint
from medsynth.training.generate import load_recipe

DANGER_RECIPE = "danger-unet"
HEATMAP_RECIPE = "lesion-heatmap"


def predict_danger(
    checkpoint: Path | str | Checkpoint,
    image: MedImage,
    threshold: float = 0.5,
    device: str = "cpu",
) -> np.ndarray:
    """``M_danger`` as uint8 (1 permissible, 0 forbidden), shaped like the image (``(H, W)`` or ``(Z, H, W)``).

    A pixel is permissible when the model's probability reaches `threshold`.
    """
    if not 0.0 < threshold < 1.0:
        raise InputError(f"threshold {threshold} must lie strictly between 0 and 1, e.g. 0.5")
    return (predict_probability(checkpoint, image, DANGER_RECIPE, device) >= threshold).astype(np.uint8)


def predict_heatmap(checkpoint: Path | str | Checkpoint, image: MedImage, device: str = "cpu") -> np.ndarray:
    """Location prior float32 shaped like the image; each 2D slice sums to 1, like `LocationPrior.heatmap`."""
    heat = predict_probability(checkpoint, image, HEATMAP_RECIPE, device).astype(np.float64)
    totals = heat.sum(axis=(-2, -1), keepdims=True)
    return (heat / np.maximum(totals, np.finfo(float).tiny)).astype(np.float32)


def predict_probability(
    checkpoint: Path | str | Checkpoint,
    image: MedImage,
    recipe: str,
    device: str = "cpu",
) -> np.ndarray:
    """Per-pixel probabilities float32 in [0, 1] of the `recipe` model of `checkpoint`, shaped like the image."""
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = load_checkpoint(checkpoint)
    if checkpoint.recipe != recipe:
        raise CheckpointError(
            f"checkpoint {checkpoint.label} was trained with recipe {checkpoint.recipe!r}; this prediction needs a "
            f"{recipe!r} checkpoint (train one with --recipe {recipe})"
        )
    if image.is_rgb or image.has_time:
        raise InputError(
            f"{image.name!r} has axes {image.axes!r}; predict on a grey 2D image or 3D volume "
            "(convert RGB to grey, or pick one time frame)"
        )
    model = load_recipe(checkpoint, device).models["unet"].eval()
    values = np.asarray(image.array, dtype=np.float32)
    if image.ndim_spatial == 2:
        return _predict_plane(model, checkpoint, values)
    axis = int(checkpoint.data.get("slice_axis", 0))
    planes = [_predict_plane(model, checkpoint, plane) for plane in np.moveaxis(values, axis, 0)]
    return np.moveaxis(np.stack(planes), 0, axis)


@torch.no_grad()
def _predict_plane(model: torch.nn.Module, checkpoint: Checkpoint, plane: np.ndarray) -> np.ndarray:
    """``(H, W)`` data values -> ``(H, W)`` probabilities of the model, via the training resolution."""
    size = int(checkpoint.settings["resolution"])
    device = next(model.parameters()).device
    x = fit_square(torch.from_numpy(checkpoint.normalization.apply(plane))[None], size)
    probability = torch.sigmoid(model(x[None].to(device)).float())[0].cpu()
    return _unfit_square(probability, plane.shape)[0].numpy()


def _unfit_square(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The inverse of `fit_square`: ``(C, S, S)`` -> ``(C, H, W)``, resized to the padded square then cropped."""
    h, w = shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    square = F.interpolate(x[None], size=(side, side), mode="bilinear", align_corners=False)[0]
    return square[:, top : top + h, left : left + w]
