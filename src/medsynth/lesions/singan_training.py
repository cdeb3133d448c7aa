"""The SinGAN lesion generator of the lesion workflow: training on one crop, saving, loading, sampling lesions.

SinGAN is the training engine's ``singan`` recipe (`medsynth.training.recipes.singan` describes the
method); this module is its entry for the Lesions widget, ``medsynth lesions`` and scripts, which
hold the crop as arrays or as a 2D `MedImage` (which keeps its modality, units and spacing).
`train_singan` is `medsynth.training.trainer.train` with that recipe on ``[(values, mask)]``: the
same events (`Progress.phase` names the scale), a preview per scale, stop and pause through
`TrainControl`, and one engine checkpoint at the end. Given ``trainer=train_in_process``
(`medsynth.training.process`), it trains in a child process, as every recipe does from the viewer.
The recipe's settings (`SinGANSettings`) and the run's options (`SinGANRunOptions`: seed, progress
interval) are separate; the rest of the run follows from the pyramid. Its crop is the mask's
bounding box plus `margin` pixels of `values` (``margin=-1``: all of `values`), normalised to
[-1, 1] by its own minimum and maximum, which the checkpoint stores.

Sampling (`sample_lesions`) draws fresh noise from scale `start_scale` on (0: the whole lesion is
new; higher: the crop's layout with new detail) at an output size `size` times the crop's, and
returns lesions in the crop's units.

A lesion model file is an ordinary engine checkpoint (`medsynth.training.checkpoint`) of recipe
``singan``: `load_singan` reads the ones `train_singan`, `save_singan` and ``medsynth train --recipe
singan`` write, including checkpoints saved mid-scale (their current scale counts as trained).
Files of the former separate format (header key ``medsynth_singan``) are refused with a
CheckpointError that says to train again.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from medsynth.atomic import write_bytes
from medsynth.data.datasets import LesionCropDataset
from medsynth.data.normalization import Normalization
from medsynth.errors import CheckpointError, InputError
from medsynth.io.image import MedImage
from medsynth.lesions.fusion import Lesion
from medsynth.models.singan import SinGAN
from medsynth.settings import parse, to_dict, with_default
from medsynth.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from medsynth.training.config import RunOptions, TrainConfig
from medsynth.training.control import TrainControl
from medsynth.training.events import CheckpointSaved, Event, Finished, drain
from medsynth.training.generate import load_recipe
from medsynth.training.recipes.singan import SinGANRecipe, SinGANSettings, finished_state, pyramid_shapes
from medsynth.training.trainer import train

__all__ = [
    "RECIPE",
    "LesionGenerator",
    "SinGANRunOptions",
    "SinGANSettings",
    "crop_tensor",
    "load_singan",
    "pyramid_shapes",
    "sample_lesions",
    "save_singan",
    "train_singan",
    "train_to_end",
]

RECIPE = SinGANRecipe.name
PREVIEW_SAMPLES = 4
_NO_INTERMEDIATE_CHECKPOINTS = 2**31 - 1

Trainer = Callable[[TrainConfig, Sequence[Any], TrainControl | None], Iterator[Event]]
"""`medsynth.training.trainer.train`, or `medsynth.training.process.train_in_process` for a child process."""


@dataclass(kw_only=True)
class SinGANRunOptions:
    """The run options of training a lesion model (`RunOptions`' declarations); the rest follows from the pyramid."""

    seed: int = with_default(RunOptions, "seed", 0)
    log_every: int = with_default(RunOptions, "log_every", 25, "a step is one round of a scale")


@dataclass(frozen=True)
class LesionGenerator:
    """A trained SinGAN with what is needed to return lesions in data units."""

    model: SinGAN
    normalization: Normalization
    settings: SinGANSettings
    seed: int = 0
    """The seed the model was trained with."""
    path: Path | None = None
    data: dict[str, Any] = field(default_factory=dict)
    """The training crop's description from the checkpoint (spacing, modality, units, hash)."""
    step: int = 0

    @property
    def scales(self) -> int:
        return self.model.trained_scales


def crop_tensor(values: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, Normalization]:
    """``(1, 2, H, W)`` training tensor of a whole crop (normalised values, mask as -1/1) and its min/max normalisation."""
    dataset = LesionCropDataset(values, mask)
    return dataset[0][None], dataset.normalization


def train_singan(
    values: np.ndarray | MedImage,
    mask: np.ndarray,
    settings: SinGANSettings | None = None,
    *,
    run: SinGANRunOptions | None = None,
    control: TrainControl | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    trainer: Trainer = train,
) -> Generator[Event, None, LesionGenerator]:
    """Train a SinGAN on a ``(H, W)`` crop in data units and its ``(H, W)`` lesion mask, yielding the engine's events.

    Given as a `MedImage`, the crop's modality, units and pixel spacing go into the checkpoint (and
    `LesionGenerator.data`), so that fusion can refuse a background of another kind; plain arrays
    record modality ``OT``, no units and spacing 1.

    The crop is trimmed to the mask's bounding box plus ``settings.margin`` pixels (-1: kept whole).
    A stop request ends training after the current round and keeps the scales trained so far,
    the interrupted one included (the missing finer scales are then replaced by upsampling). The
    model is written to `checkpoint` when given; `CheckpointSaved` and `Finished.checkpoint` name
    it. The generator's return value (``StopIteration.value``, napari's ``worker.returned``) is the
    trained `LesionGenerator`.
    """
    settings, run = settings or SinGANSettings(), run or SinGANRunOptions()
    if checkpoint is not None:
        _check_suffix(Path(checkpoint))
    with tempfile.TemporaryDirectory(prefix="medsynth-singan-") as work:
        config = TrainConfig(
            recipe=RECIPE,
            out_dir=Path(work),
            settings=to_dict(settings),
            device=device,
            seed=run.seed,
            log_every=run.log_every,
            sample_every=settings.iterations,
            checkpoint_every=_NO_INTERMEDIATE_CHECKPOINTS,
            preview_samples=PREVIEW_SAMPLES,
            mixed_precision=False,
        )
        path, finished = None, None
        for event in trainer(config, [(values, mask)], control):
            if isinstance(event, Finished):
                finished = event
            elif not isinstance(event, CheckpointSaved):
                yield event
            elif checkpoint is not None:
                # The run's own checkpoint lives in the temporary folder; the caller's copy is the one named.
                path = write_bytes(checkpoint, event.path.read_bytes())
                yield CheckpointSaved(event.step, path)
        trained = _lesion_generator(load_checkpoint(finished.checkpoint))
    yield dataclasses.replace(finished, checkpoint=path)
    return dataclasses.replace(trained, path=path)


def train_to_end(
    values: np.ndarray | MedImage, mask: np.ndarray, settings: SinGANSettings | None = None, **options: Any
) -> LesionGenerator:
    """Run `train_singan` synchronously, ignoring its events; the trained generator (for scripts and tests)."""
    return drain(train_singan(values, mask, settings, **options))


def save_singan(
    lesion_generator: LesionGenerator, path: str | os.PathLike[str], *, step: int | None = None, reason: str = "completed"
) -> Path:
    """Write a trained SinGAN as a ``singan`` engine checkpoint at `path` (atomically); return the path.

    The file holds the trained scales only (no critic or optimizer), so it samples but does not resume.
    """
    path = Path(path)
    _check_suffix(path)
    checkpoint = Checkpoint(
        recipe=RECIPE,
        settings=to_dict(lesion_generator.settings),
        step=lesion_generator.step if step is None else step,
        normalization=lesion_generator.normalization,
        data=lesion_generator.data,
        state=finished_state(lesion_generator.model, lesion_generator.settings.iterations),
        seed=lesion_generator.seed,
        extra={"reason": reason},
    )
    return save_checkpoint(checkpoint, path)


def load_singan(path: str | os.PathLike[str]) -> LesionGenerator:
    """Read a SinGAN lesion model (a ``singan`` checkpoint); CheckpointError for a missing, foreign, old or corrupt file."""
    checkpoint = load_checkpoint(path)
    if checkpoint.recipe != RECIPE:
        raise CheckpointError(
            f"{path} was made by recipe {checkpoint.recipe!r}, not {RECIPE!r}; give a SinGAN lesion model"
        )
    return _lesion_generator(checkpoint)


def sample_lesions(
    lesion_generator: LesionGenerator, n: int, seed: int, *, start_scale: int = 0, size: float = 1.0
) -> list[Lesion]:
    """`n` new lesions in the crop's units, each with its footprint (largest mask component, holes filled).

    A lesion whose generated mask is empty keeps an empty footprint; callers draw again.
    """
    if n < 1:
        raise InputError(f"the number of lesions n={n} must be at least 1")
    if not 0 < size <= 8:
        raise InputError(f"lesion size factor {size} must be in (0, 8]")
    if lesion_generator.scales == 0:
        raise InputError("this SinGAN has no trained scale yet (it was stopped before its first round); train it longer")
    if not 0 <= start_scale < lesion_generator.scales:
        raise InputError(
            f"variability start scale {start_scale} must be between 0 (most varied) and {lesion_generator.scales - 1}"
        )
    images = lesion_generator.model.sample(n, torch.Generator().manual_seed(seed), start_scale, size).cpu().numpy()
    values = lesion_generator.normalization.invert(images[:, 0])
    return [Lesion(v, _footprint(m > 0)) for v, m in zip(values, images[:, 1])]


def _lesion_generator(checkpoint: Checkpoint) -> LesionGenerator:
    """The trained pyramid of a ``singan`` checkpoint (its current scale included once it trained a round), on CPU."""
    singan = load_recipe(checkpoint, "cpu")
    return LesionGenerator(
        singan.trained_pyramid(),
        checkpoint.normalization,
        parse(SinGANSettings, checkpoint.settings),
        checkpoint.seed,
        checkpoint.path,
        checkpoint.data,
        checkpoint.step,
    )


def _check_suffix(path: Path) -> None:
    if path.suffix != ".safetensors":
        raise InputError(f"{path}: a SinGAN checkpoint name must end with .safetensors; rename the output")


def _footprint(mask: np.ndarray) -> np.ndarray:
    components, count = ndimage.label(mask)
    if count == 0:
        return mask
    largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
    return ndimage.binary_fill_holes(components == largest)
