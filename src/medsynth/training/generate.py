"""Generating synthetic images from a checkpoint, in the units and spacing of the training data."""

from __future__ import annotations

from pathlib import Path

import torch

import medsynth
from medsynth.errors import CheckpointError, InputError
from medsynth.io.image import MedImage, SyntheticProvenance
from medsynth.settings import parse
from medsynth.training.checkpoint import Checkpoint, load_checkpoint
from medsynth.training.device import select_device
from medsynth.training.recipe import Recipe, get_recipe


def load_recipe(checkpoint: Checkpoint, device: str = "auto") -> Recipe:
    """The checkpoint's recipe built on `device` with its weights loaded."""
    recipe_cls = get_recipe(checkpoint.recipe)
    recipe = recipe_cls()
    recipe.build(parse(recipe_cls.settings_cls, checkpoint.settings), select_device(device))
    try:
        recipe.load_state_dict(checkpoint.state)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {checkpoint.label} does not match its recipe's models: {exc}") from None
    return recipe


def synthetic_provenance(checkpoint: Checkpoint, seed: int | None, details: str = "") -> SyntheticProvenance:
    """What made an output of `checkpoint`: recipe, package version, checkpoint, seed, step and `details`."""
    description = f"step {checkpoint.step}; {details}" if details else f"step {checkpoint.step}"
    return SyntheticProvenance(
        model=checkpoint.recipe,
        model_version=medsynth.__version__,
        checkpoint=checkpoint.label,
        seed=seed,
        description=description,
    )


def generate(checkpoint: Path | str | Checkpoint, n: int, seed: int = 0, device: str = "auto") -> MedImage:
    """`n` synthetic images ``(N, H, W)`` in data units from the EMA generator of `checkpoint`.

    The result has axes ``"zyx"`` with axis 0 indexing the samples (``metadata["sample_axis"] = 0``),
    spacing ``(1.0, sy, sx)`` where ``(sy, sx)`` is the training data's in-plane spacing rescaled to
    the training resolution, the training data's modality and units, and synthetic provenance. The
    same checkpoint and seed give the same images.

    Of a ``singan`` checkpoint these are lesions at the crop's size and spacing, fresh noise at every
    scale; their footprint masks, the variability (`start_scale`) and the size factor come from
    `medsynth.lesions.singan_training.sample_lesions` on `load_singan` of the same file.
    """
    if n < 1:
        raise InputError(f"number of images {n} must be at least 1")
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = load_checkpoint(checkpoint)
    recipe = load_recipe(checkpoint, device)
    if recipe.data_kind == "sequence":
        raise InputError(f"recipe {recipe.name!r} generates sequences; generate() makes 2D images only")
    images = recipe.sample(n, torch.Generator().manual_seed(seed))
    array = checkpoint.normalization.invert(images[:, 0].numpy())
    row, col = checkpoint.data.get("pixel_spacing", (1.0, 1.0))
    return MedImage(
        array=array,
        axes="zyx",
        spacing=(1.0, float(row), float(col)),
        modality=checkpoint.data.get("modality", "OT"),
        units=checkpoint.data.get("units", ""),
        name=f"synthetic {checkpoint.recipe}",
        synthetic=synthetic_provenance(checkpoint, seed),
        metadata={"sample_axis": 0, "checkpoint_step": checkpoint.step},
    )
