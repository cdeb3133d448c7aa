"""Generating synthetic image sequences (2D+t) from a sequence checkpoint, at any size up to 4096 x 4096.

`iter_sequences` is a plain generator that yields `SequenceProgress` and returns the `MedImage`; it
runs synchronously (`generate_sequences`) or in a napari worker. Output is in the training data's
units and pixel spacing (rescaled to the requested resolution), with the frame time of the training
data and synthetic provenance.

Sizes above the training resolution come from running the generator on a larger input grid (its
layers after the input stage are all convolutional). Large frames are generated in tiles of the
input grid with an overlap ("halo") wider than the network's receptive field, so tiles join without
seams and peak memory is bounded by the tile size, not the frame size; `HALO` is checked by the
tests (tiled output equals untiled output).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import numpy as np
import torch
import torch.nn.functional as F

from medsynth.errors import InputError
from medsynth.io.image import MedImage
from medsynth.models.hrgan import INPUT_SIDE, HRGANGenerator, modality_index
from medsynth.training.checkpoint import Checkpoint, load_checkpoint
from medsynth.training.events import drain
from medsynth.training.generate import load_recipe, synthetic_provenance

HALO = 6
"""Overlap of tiles in input-grid cells; covers the generator's receptive field (about 4 cells)."""
UNTILED_MAX = 1024
"""Frames up to this side are generated whole; larger ones in tiles of `AUTO_TILE` pixels."""
AUTO_TILE = 512
PIXEL_BUDGET = 2**22
"""Output pixels generated per forward pass when frames are not tiled (frames are batched up to it)."""


@dataclass(frozen=True)
class SequenceProgress:
    """Frames generated so far, of `total` (all sequences together)."""

    done: int
    total: int


def generate_sequences(
    checkpoint: Path | str | Checkpoint,
    n: int,
    seed: int = 0,
    frames: int | None = None,
    resolution: int | None = None,
    modality: str | None = None,
    device: str = "auto",
    tile: int | None = None,
) -> MedImage:
    """`n` synthetic sequences from `checkpoint`; see `iter_sequences` for the arguments and the result."""
    return drain(iter_sequences(checkpoint, n, seed, frames, resolution, modality, device, tile))


def iter_sequences(
    checkpoint: Path | str | Checkpoint,
    n: int,
    seed: int = 0,
    frames: int | None = None,
    resolution: int | None = None,
    modality: str | None = None,
    device: str = "auto",
    tile: int | None = None,
) -> Generator[SequenceProgress, None, MedImage]:
    """Generate `n` sequences of `frames` frames (default: the training clip length) of `resolution` pixels.

    `resolution` (default: the training side length) must be the training side times a whole
    multiple of 1/4, at least the training side. `modality` (default: the training modality) is the
    generator's condition. `tile` (output pixels, a multiple of the pixels per input-grid cell) bounds
    memory; None tiles frames above `UNTILED_MAX` pixels by `AUTO_TILE`. Yields progress after every
    batch of frames or tile row; returns axes ``"tyx"`` for one sequence, ``"tzyx"`` (z indexing the
    sequences, ``metadata["sample_axis"] = 1``) for several. The same arguments give the same images.
    `SequenceJob` makes them a block of frames at a time, for outputs larger than memory.
    """
    job = SequenceJob(checkpoint, n, seed, frames, resolution, modality, device, tile)
    out = np.empty(job.shape, dtype=np.float32)
    done = 0
    for i, start, block in job.blocks():
        out[i, start : start + len(block)] = block
        done += len(block)
        yield SequenceProgress(done, job.n * job.frames)
    return job.image(out)


class SequenceJob:
    """One request of `iter_sequences`, checked, with its model loaded: its output's shape and the blocks that make it.

    InputError on construction for a bad count, frame count, modality, resolution or tile, or a
    checkpoint that does not generate sequences.
    """

    def __init__(
        self,
        checkpoint: Path | str | Checkpoint,
        n: int,
        seed: int = 0,
        frames: int | None = None,
        resolution: int | None = None,
        modality: str | None = None,
        device: str = "auto",
        tile: int | None = None,
    ) -> None:
        if n < 1:
            raise InputError(f"number of sequences {n} must be at least 1")
        self.checkpoint = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        self.recipe = load_recipe(self.checkpoint, device)
        self.generator = self.recipe.ema.module if self.recipe.ema is not None else None
        if not isinstance(self.generator, HRGANGenerator):
            raise InputError(
                f"checkpoint {self.checkpoint.label} was made by recipe {self.checkpoint.recipe!r}, which does not "
                "generate sequences of any size; use `medsynth generate` for 2D recipes"
            )
        settings = self.recipe.settings
        self.n, self.seed = n, seed
        self.frames = settings.frames if frames is None else frames
        if self.frames < 1:
            raise InputError(f"number of frames {self.frames} must be at least 1")
        self.modality = modality or settings.modality
        modality_index(self.modality)
        self.side = settings.resolution if resolution is None else resolution
        self.grid = input_grid(self.side, settings.resolution)
        self.stage, self.alpha = self.recipe.schedule(self.recipe.step)
        self.cell = self.generator.resolutions[self.stage] // INPUT_SIDE  # output pixels per input-grid cell
        self.tile_cells = tile_grid(tile, self.grid * self.cell, self.cell)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(N, T, S, S)``: sequences, frames, side, side."""
        return (self.n, self.frames, self.side, self.side)

    def blocks(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(sequence, first frame, frames (f, S, S) float32 in data units)``, sequence by sequence, in frame order."""
        generator, recipe = self.generator, self.recipe
        content, noise = recipe.latents(self.n, self.frames, torch.Generator().manual_seed(self.seed))
        # Tiled frames go one at a time; whole frames are batched up to the pixel budget.
        whole = self.tile_cells >= self.grid
        per_pass = max(1, PIXEL_BUDGET // (self.grid * self.cell) ** 2) if whole else 1
        with torch.inference_mode():
            for i in range(self.n):
                latents = generator.frame_latents(content[i : i + 1], noise[i : i + 1])
                embedding = generator.embed(recipe.modality_tensor(1, self.modality), self.frames)
                for start in range(0, self.frames, per_pass):
                    stop = min(self.frames, start + per_pass)
                    x = generator.input_map(latents[start:stop], embedding[start:stop], self.grid)
                    images = synthesize_tiled(
                        generator, x, embedding[start:stop], self.stage, self.alpha, self.tile_cells
                    )
                    if images.shape[-1] != self.side:
                        images = F.interpolate(images, size=(self.side, self.side), mode="nearest")
                    yield i, start, self.checkpoint.normalization.invert(images[:, 0].float().cpu().numpy())

    def image(self, array: np.ndarray) -> MedImage:
        """``(m, T, S, S)`` data-unit frames of this job (all sequences, or some) as a synthetic MedImage.

        ``"tyx"`` when the job makes one sequence, else ``"tzyx"`` with the sequences on the slice axis.
        """
        return _as_medimage(array, self.checkpoint, self.seed, self.side, self.modality, self.n)


def input_grid(side: int, trained: int) -> int:
    """Input-grid cells per side giving `side` pixels from a generator trained at `trained` pixels."""
    step = trained // INPUT_SIDE
    if side < trained or side % step:
        raise InputError(
            f"resolution {side} is not available from a model trained at {trained} px: choose a multiple of "
            f"{step} that is at least {trained} (e.g. {trained}, {2 * trained}, {8 * trained})"
        )
    return side // step


def tile_grid(tile: int | None, side: int, cell: int) -> int:
    """Tile side in input-grid cells for a tile of `tile` output pixels (None: automatic) of a `side`-pixel frame."""
    if tile is None:
        tile = side if side <= UNTILED_MAX else AUTO_TILE
    if tile < cell or tile % cell:
        raise InputError(f"tile {tile} must be a positive multiple of {cell} pixels (one input-grid cell)")
    return min(tile, side) // cell


def synthesize_tiled(
    generator: HRGANGenerator, x: torch.Tensor, embedding: torch.Tensor, stage: int, alpha: float, tile: int
) -> torch.Tensor:
    """`generator.synthesize` of ``(N, C0, g, g)`` input maps, `tile` x `tile` cells at a time -> ``(N, 1, g k, g k)``.

    Each tile is computed with `HALO` extra cells on every side (fewer at the frame border, where the
    untiled network sees zero padding too) and cropped, so the result equals the untiled one.
    """
    g = x.shape[-1]
    if tile >= g:
        return generator.synthesize(x, embedding, stage, alpha)
    k = generator.resolutions[stage] // INPUT_SIDE
    out = torch.empty(x.shape[0], 1, g * k, g * k, device=x.device)
    for top in range(0, g, tile):
        for left in range(0, g, tile):
            t0, l0 = max(0, top - HALO), max(0, left - HALO)
            t1, l1 = min(g, top + tile + HALO), min(g, left + tile + HALO)
            part = generator.synthesize(x[..., t0:t1, l0:l1], embedding, stage, alpha)
            h, w = min(tile, g - top), min(tile, g - left)
            out[..., top * k : (top + h) * k, left * k : (left + w) * k] = part[
                ..., (top - t0) * k : (top - t0 + h) * k, (left - l0) * k : (left - l0 + w) * k
            ]
    return out


def frame_time(checkpoint: Checkpoint) -> float | None:
    """Median frame time (ms) of the training images, when their description records it."""
    times = [image.get("time_spacing") for image in checkpoint.data.get("images", [])]
    known = [float(t) for t in times if t]
    return median(known) if known else None


def _as_medimage(
    array: np.ndarray, checkpoint: Checkpoint, seed: int, side: int, modality: str, n: int
) -> MedImage:
    """``(m, T, S, S)`` data-unit frames of `n` sequences as a synthetic MedImage (``"tzyx"``; ``"tyx"`` for one)."""
    frames = array.shape[1]
    trained = int(checkpoint.settings["resolution"])
    row, col = (float(s) * trained / side for s in checkpoint.data["pixel_spacing"])
    data_modality = checkpoint.data.get("modality", "OT")
    provenance = synthetic_provenance(checkpoint, seed, f"{n} x {frames} frames of {side}x{side}; modality {modality}")
    common = {
        "time_spacing": frame_time(checkpoint),
        "modality": modality,
        # Units are only known for the modality the model was trained on.
        "units": checkpoint.data.get("units", "") if modality == data_modality else "",
        "name": f"synthetic {checkpoint.recipe}",
        "synthetic": provenance,
    }
    meta = {"checkpoint_step": checkpoint.step}
    if n == 1:
        return MedImage(array=array[0], axes="tyx", spacing=(row, col), metadata=meta, **common)
    # Sequences stack on the slice axis: (T, N, S, S), one time slider over all of them.
    stacked = np.ascontiguousarray(array.transpose(1, 0, 2, 3))
    return MedImage(array=stacked, axes="tzyx", spacing=(1.0, row, col), metadata={**meta, "sample_axis": 1}, **common)
