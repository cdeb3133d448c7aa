"""Predictions of the learned lesion models: the danger zone (``danger-unet``) and the location heatmap (``lesion-heatmap``).

Both load an engine checkpoint (`medsynth.training.checkpoint`), normalise the image as the
training data was normalised, run the U-Net on each 2D slice padded to a square at the training
resolution (as `medsynth.data.datasets.fit_square` prepares training items), and map the
probabilities back onto the image's own grid.

The CLI's ``--danger`` and ``--location-model`` and the Lesions widget take either a file made by
hand or by the rules, or one of these checkpoints: `load_danger_source` and `load_location_model`
decide by the file's content (a safetensors checkpoint, a location-prior JSON, a mask image), never
by its name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medsynth.data.datasets import fit_square
from medsynth.errors import CheckpointError, InputError, UnreadableFileError
from medsynth.io.image import MedImage
from medsynth.lesions.location import LocationModel, load_location_prior
from medsynth.training.checkpoint import Checkpoint, load_checkpoint
from medsynth.training.generate import load_recipe

DANGER_RECIPE = "danger-unet"
HEATMAP_RECIPE = "lesion-heatmap"
_MAX_SAFETENSORS_HEADER = 100 * 2**20
"""The safetensors format's limit on its JSON header."""


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
    return _as_density(predict_probability(checkpoint, image, HEATMAP_RECIPE, device))


def predict_probability(
    checkpoint: Path | str | Checkpoint,
    image: MedImage,
    recipe: str,
    device: str = "cpu",
) -> np.ndarray:
    """Per-pixel probabilities float32 in [0, 1] of the `recipe` model of `checkpoint`, shaped like the image."""
    checkpoint = _checked(checkpoint, recipe)
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


@dataclass(frozen=True)
class HeatmapModel:
    """A ``lesion-heatmap`` checkpoint as a `LocationModel`: the heatmap it predicts on each background plane."""

    checkpoint: Checkpoint
    model: torch.nn.Module
    """The U-Net, loaded once and in eval mode."""

    @classmethod
    def load(cls, checkpoint: Path | str | Checkpoint, device: str = "cpu") -> HeatmapModel:
        checkpoint = _checked(checkpoint, HEATMAP_RECIPE)
        return cls(checkpoint, load_recipe(checkpoint, device).models["unet"].eval())

    def plane_heatmap(self, plane: np.ndarray) -> np.ndarray:
        """``(H, W)`` float32 density over an ``(H, W)`` plane in data units (sums to 1)."""
        plane = np.asarray(plane, dtype=np.float32)
        if plane.ndim != 2:
            raise InputError(f"a location heatmap is predicted on a 2D plane, got an array of shape {plane.shape}")
        return _as_density(_predict_plane(self.model, self.checkpoint, plane))

    def describe(self) -> str:
        return f"lesion-heatmap model {self.checkpoint.label.split()[0]}"


def load_location_model(path: str | os.PathLike[str], device: str = "cpu") -> LocationModel:
    """The location model in `path`: a kernel-density prior (JSON) or a ``lesion-heatmap`` checkpoint.

    CheckpointError for any other file (a SinGAN or ``danger-unet`` checkpoint, an image, ...).
    """
    path = Path(path)
    kind = _file_kind(path)
    if kind == "safetensors":
        return HeatmapModel.load(path, device)
    if kind == "json":
        return load_location_prior(path)
    raise CheckpointError(
        f"{path}: neither a location prior (JSON from `medsynth lesions --location-labels` or "
        "save_location_prior) nor a lesion-heatmap checkpoint (.safetensors from `medsynth train --recipe "
        "lesion-heatmap`); give one of those"
    )


def load_danger_source(path: str | os.PathLike[str]) -> Checkpoint | MedImage:
    """A ``danger-unet`` checkpoint, or a danger mask image (read as a label map), decided by the file's content."""
    path = Path(path)
    if _file_kind(path) == "safetensors":
        return _checked(load_checkpoint(path), DANGER_RECIPE)
    from medsynth.io import read_image

    return read_image(path, as_label=True)


def danger_for(source: Checkpoint | MedImage, image: MedImage, threshold: float = 0.5) -> np.ndarray:
    """``M_danger`` uint8 of `image` (its spatial shape) from a `load_danger_source` result.

    A checkpoint predicts it (`predict_danger`); a mask must lie on the image's grid and hold only
    1 (permissible) and 0 (forbidden), so that an image given by mistake is refused, not used.
    """
    if isinstance(source, Checkpoint):
        return predict_danger(source, image, threshold)
    mask = np.asarray(source.array)
    if mask.shape != np.shape(image.array):
        raise InputError(
            f"the danger mask {source.name!r} has shape {mask.shape} but {image.name!r} has {np.shape(image.array)}; "
            "give a mask drawn on this image, a danger-unet checkpoint, or 'auto'"
        )
    values = np.unique(mask)
    if not np.isin(values, (0, 1)).all():
        raise InputError(
            f"the danger mask {source.name!r} holds values {values[:10].tolist()}; a danger mask holds 1 (permissible) "
            "and 0 (forbidden): give such a mask (not the image itself), or a danger-unet checkpoint"
        )
    return mask.astype(np.uint8)


def _checked(checkpoint: Path | str | Checkpoint, recipe: str) -> Checkpoint:
    """`checkpoint` loaded; CheckpointError unless it was trained with `recipe`."""
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = load_checkpoint(checkpoint)
    if checkpoint.recipe != recipe:
        raise CheckpointError(
            f"checkpoint {checkpoint.label} was trained with recipe {checkpoint.recipe!r}; this prediction needs a "
            f"{recipe!r} checkpoint (train one with --recipe {recipe})"
        )
    return checkpoint


def _file_kind(path: Path) -> str:
    """``"safetensors"`` (8-byte header length, then a JSON header), ``"json"`` (an object), else ``"other"`` (a DICOM folder too)."""
    if path.is_dir():
        return "other"
    try:
        with path.open("rb") as file:
            head = file.read(9)
            size = os.fstat(file.fileno()).st_size
    except OSError as exc:
        raise UnreadableFileError(f"{path}: cannot be read ({exc.strerror or exc}); check the path") from None
    # Checked before JSON: a header length can begin with the byte of "{".
    header = int.from_bytes(head[:8], "little")
    if len(head) == 9 and head[8:9] == b"{" and header <= min(_MAX_SAFETENSORS_HEADER, size - 8):
        return "safetensors"
    if head.lstrip()[:1] == b"{":
        return "json"
    return "other"


def _as_density(probability: np.ndarray) -> np.ndarray:
    """Probabilities ``(..., H, W)`` scaled so that each 2D slice sums to 1 (float32)."""
    heat = probability.astype(np.float64)
    totals = heat.sum(axis=(-2, -1), keepdims=True)
    return (heat / np.maximum(totals, np.finfo(float).tiny)).astype(np.float32)


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
