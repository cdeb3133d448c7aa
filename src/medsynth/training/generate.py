"""Generating synthetic images from a checkpoint, in the units and spacing of the training data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

import medsynth
from medsynth.errors import CheckpointError, InputError
from medsynth.io.image import MedImage, SyntheticProvenance
from medsynth.training.checkpoint import Checkpoint, checkpoint_settings, load_checkpoint
from medsynth.training.device import select_device
from medsynth.training.recipe import SAMPLE_CHUNK, Recipe, get_recipe


def load_recipe(checkpoint: Checkpoint, device: str = "auto") -> Recipe:
    """The checkpoint's recipe built on `device` with its weights loaded."""
    recipe = get_recipe(checkpoint.recipe)()
    recipe.build(checkpoint_settings(checkpoint), select_device(device))
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
    same checkpoint and seed give the same images. `iter_images` makes them a chunk at a time, for
    outputs larger than memory.

    Of a ``singan`` checkpoint these are lesions at the crop's size and spacing, fresh noise at every
    scale; their footprint masks, the variability (`start_scale`) and the size factor come from
    `medsynth.lesions.singan_training.sample_lesions` on `load_singan` of the same file.
    """
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = load_checkpoint(checkpoint)
    return images_medimage(np.concatenate(list(iter_images(checkpoint, n, seed, device))), checkpoint, seed)


def iter_images(
    checkpoint: Checkpoint, n: int, seed: int = 0, device: str = "auto", chunk: int = SAMPLE_CHUNK
) -> Iterator[np.ndarray]:
    """The images of `generate` as ``(m, H, W)`` float32 chunks in data units, at most `chunk` each, in order.

    The latents of every chunk continue one random stream, so the chunks join to exactly the images
    of `generate` with the same checkpoint and seed. The model is loaded (and bad arguments refused)
    when the iteration starts.
    """
    if n < 1:
        raise InputError(f"number of images {n} must be at least 1")
    recipe = load_recipe(checkpoint, device)
    if recipe.data_kind == "sequence":
        raise InputError(f"recipe {recipe.name!r} generates sequences; generate() makes 2D images only")
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, n, chunk):
        images = recipe.sample(min(chunk, n - start), generator)
        yield checkpoint.normalization.invert(images[:, 0].numpy())


def images_medimage(array: np.ndarray, checkpoint: Checkpoint, seed: int) -> MedImage:
    """``(N, H, W)`` data-unit images of `checkpoint` (or a chunk of them) as the MedImage `generate` returns."""
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
