"""Generated backgrounds for lesion synthesis: the background route of the two-route pipeline.

`generate_backgrounds` turns the samples of a 2D image model (a ``vqgan-hdfb`` or ``vqgan``
checkpoint, or any other ``image2d`` recipe) into separate 2D images, in the training data's units,
modality and pixel spacing, each marked synthetic with the model's provenance and recording where
it came from in ``metadata["source"]``. Lesions are then placed and fused into them as into real
backgrounds (`medsynth.lesions.batch`).
"""

from __future__ import annotations

from pathlib import Path

from medsynth.errors import InputError
from medsynth.io.image import MedImage
from medsynth.training.checkpoint import Checkpoint, load_checkpoint
from medsynth.training.generate import generate
from medsynth.training.recipe import get_recipe


def generate_backgrounds(
    checkpoint: Path | str | Checkpoint, count: int, seed: int = 0, device: str = "auto"
) -> list[MedImage]:
    """`count` background images ``(H, W)`` sampled from `checkpoint` with `seed`."""
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = load_checkpoint(checkpoint)
    kind = get_recipe(checkpoint.recipe).data_kind
    if kind != "image2d":
        raise InputError(
            f"checkpoint {checkpoint.label} is of recipe {checkpoint.recipe!r} ({kind} data), which does not generate "
            "background images; give a vqgan-hdfb or vqgan checkpoint (medsynth train --recipe vqgan-hdfb)"
        )
    samples = generate(checkpoint, count, seed=seed, device=device)
    origin = checkpoint.path or checkpoint.label
    return [
        MedImage(
            array=samples.array[k],
            axes="yx",
            spacing=samples.spacing[1:],
            modality=samples.modality,
            units=samples.units,
            name=f"{checkpoint.recipe} background {k + 1:04d}",
            synthetic=samples.synthetic,
            metadata={"source": f"{origin} sample {k} (seed {seed})", "sample_index": k},
        )
        for k in range(count)
    ]
