"""Translating or fusing given images with a two-domain checkpoint, on the input's own grid.

The model saw slices padded to a square and resized to its training side length, so each plane of
the input is prepared the same way (in its domain's intensity map), translated, resized back and
cropped to the plane, and returned in the output domain's units. The result has the first input's
shape, axes, spacing and orientation, so other tools pair it with the input by index.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medsynth.data.datasets import check_grey, fit_square, plane_indices
from medsynth.data.normalization import Normalization
from medsynth.errors import InputError
from medsynth.io.image import MedImage
from medsynth.training.checkpoint import Checkpoint, load_checkpoint
from medsynth.training.generate import load_recipe, synthetic_provenance
from medsynth.training.recipe import SAMPLE_CHUNK, TranslationRecipe, get_recipe


def translation_recipe(checkpoint: Checkpoint) -> type[TranslationRecipe]:
    """The checkpoint's recipe class; InputError when it does not translate given images."""
    recipe_cls = get_recipe(checkpoint.recipe)
    if not issubclass(recipe_cls, TranslationRecipe):
        raise InputError(
            f"checkpoint {checkpoint.label} is a {checkpoint.recipe!r} model, which draws images from noise and "
            "translates none; use a two-domain checkpoint (e.g. cyclegan, kgan-fusion), or generate without an input"
        )
    return recipe_cls


def translate(
    checkpoint: Path | str | Checkpoint,
    inputs: Sequence[MedImage],
    direction: str | None = None,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> MedImage:
    """`inputs` translated (or fused) by `checkpoint` in `direction` (default: the recipe's first).

    One input for a translation, the A and B images for a 2-input recipe (fusion), on one grid. The
    result lies on ``inputs[0]``'s grid in the output domain's units, marked synthetic. `progress` is
    called with (planes done, planes) after each chunk.
    """
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = load_checkpoint(checkpoint)
    recipe_cls = translation_recipe(checkpoint)
    direction = _check_direction(recipe_cls, direction)
    _check_inputs(recipe_cls, inputs)
    maps = {"a": checkpoint.normalization, "b": checkpoint.normalization_b}
    in_maps = [maps[domain] for domain in recipe_cls.input_domains(direction)]
    out_domain = recipe_cls.directions[direction]
    recipe = load_recipe(checkpoint, device)
    first = inputs[0]
    slice_axis = int(checkpoint.data.get("slice_axis", 0))
    planes = list(plane_indices(first, slice_axis))
    size = int(checkpoint.data["item_shape"][-1])
    out = np.empty(first.array.shape, dtype=np.float32)
    for start in range(0, len(planes), SAMPLE_CHUNK):
        chunk = planes[start : start + SAMPLE_CHUNK]
        batch = torch.stack([_prepare(inputs, in_maps, index, size) for index in chunk])
        result = recipe.translate(batch.to(recipe.device), direction).float().cpu()
        for index, plane in zip(chunk, result):
            out[index] = maps[out_domain].invert(_restore(plane[0], out[index].shape).numpy())
        if progress is not None:
            progress(start + len(chunk), len(planes))
    described = checkpoint.data if out_domain == "a" else checkpoint.data.get("b", {})
    return first.with_array(
        out,
        modality=described.get("modality", "OT"),
        units=described.get("units", ""),
        name=f"{checkpoint.recipe} {direction} of {first.name}",
        is_label=False,
        synthetic=synthetic_provenance(checkpoint, None, f"{direction} of {first.name}"),
    )


def _check_direction(recipe_cls: type[TranslationRecipe], direction: str | None) -> str:
    if direction is None:
        return next(iter(recipe_cls.directions))
    if direction not in recipe_cls.directions:
        raise InputError(
            f"direction {direction!r} is not one of recipe {recipe_cls.name!r}'s: {', '.join(recipe_cls.directions)}"
        )
    return direction


def _check_inputs(recipe_cls: type[TranslationRecipe], inputs: Sequence[MedImage]) -> None:
    """InputError for the wrong number of inputs, colour images, or two inputs on different grids."""
    if len(inputs) != recipe_cls.inputs:
        what = "one image" if recipe_cls.inputs == 1 else "two co-registered images (domain A, then domain B)"
        raise InputError(f"recipe {recipe_cls.name!r} takes {what}, but {len(inputs)} were given")
    for image in inputs:
        check_grey(image)
    first = inputs[0]
    for other in inputs[1:]:
        same_grid = tuple(other.array.shape) == tuple(first.array.shape) and np.allclose(
            other.affine, first.affine, rtol=1e-3, atol=1e-3 * max(first.spacing)
        )
        if not same_grid:
            raise InputError(
                f"{other.name!r} (shape {tuple(other.array.shape)}, spacing {other.spacing}, origin {other.origin}) is "
                f"not on the grid of {first.name!r} (shape {tuple(first.array.shape)}, spacing {first.spacing}, origin "
                f"{first.origin}); the inputs of a fusion must be co-registered: resample one onto the other"
            )


def _prepare(inputs: Sequence[MedImage], maps: list[Normalization], index: tuple, size: int) -> torch.Tensor:
    """``(inputs, size, size)``: plane `index` of every input, normalised in its domain and fitted as in training."""
    planes = [
        fit_square(torch.from_numpy(np.asarray(norm.apply(np.asarray(image.array[index])), np.float32))[None], size)
        for image, norm in zip(inputs, maps)
    ]
    return torch.cat(planes)


def _restore(plane: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A translated ``(size, size)`` plane resized to the input plane's square and cropped to its `shape`."""
    h, w = shape
    side = max(h, w)
    if plane.shape[-1] != side:
        square = F.interpolate(plane[None, None], size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        plane = square[0, 0]
    top, left = (side - h) // 2, (side - w) // 2
    return plane[top : top + h, left : left + w]
