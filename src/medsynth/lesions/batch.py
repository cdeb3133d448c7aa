"""Batch lesion synthesis: N synthetic images with lesions, their label maps and a manifest.

Image ``i`` uses background ``i mod len(backgrounds)`` and its own random stream
(``SeedSequence([seed, i])``), so any image can be made again from the seed and its index. For each
image, `per_image` lesions are drawn from the SinGAN (size factor uniform in `size_range`, a lesion
with an empty generated mask is drawn again), placed in ``C_final`` (the top candidates of the
location model's heatmap on the background plane, weighted by their density, or every permissible
pixel without one) with no lesion pixel in the danger zone and no two lesions overlapping, then fused
as a scene (`medsynth.lesions.scene.fuse_scene`, as the Lesions widget fuses its own). Each lesion's
manifest record is a `medsynth.lesions.manifest.LesionRecord`, the record of the widget's export.
The location model is the kernel-density prior or a learned heatmap
(`medsynth.lesions.location.LocationModel`). Volumes get their lesions in one slice (`slice_index`, the middle one by default).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import medsynth
from medsynth.atomic import write_text
from medsynth.data.geometry import image_plane
from medsynth.errors import InputError
from medsynth.io.image import MedImage, SyntheticProvenance
from medsynth.lesions.fusion import Blend, Lesion
from medsynth.lesions.location import LocationModel, top_candidates
from medsynth.lesions.manifest import LesionRecord, lesion_records
from medsynth.lesions.placement import sample_placements
from medsynth.lesions.scene import Placement, check_compatible, draw_lesion, fuse_scene
from medsynth.lesions.singan_training import LesionGenerator


@dataclass(frozen=True)
class SyntheticCase:
    index: int
    image: MedImage
    """The fused image, marked synthetic, in the background's units and geometry."""
    labels: MedImage
    """The label map (one id per lesion), marked synthetic."""
    background: str
    seed: int
    slice_index: int | None
    lesions: list[LesionRecord]


@dataclass(frozen=True)
class BatchOptions:
    per_image: int = 1
    size_range: tuple[float, float] = (0.8, 1.2)
    start_scale: int = 0
    min_spacing: float = 0.0
    candidates: int = 50
    """Top-k location candidates (``C_loc``) when a prior is given."""
    blend: str = "published"
    slice_index: int | None = None
    checkpoint: str = ""
    """Name of the lesion model, recorded in the provenance."""


def synthesize(
    backgrounds: Sequence[MedImage],
    dangers: Sequence[np.ndarray],
    lesion_generator: LesionGenerator,
    num: int,
    seed: int,
    options: BatchOptions,
    prior: LocationModel | None = None,
) -> Iterator[SyntheticCase]:
    """Yield `num` synthetic cases; `dangers` are ``M_danger`` masks, one per background (same spatial shape)."""
    if num < 1 or options.per_image < 1:
        raise InputError(f"--num {num} and --per-image {options.per_image} must both be at least 1")
    if len(dangers) != len(backgrounds):
        raise InputError(f"got {len(dangers)} danger masks for {len(backgrounds)} backgrounds; give one per background")
    low, high = options.size_range
    if not 0 < low <= high:
        raise InputError(f"lesion size range ({low}, {high}) must satisfy 0 < min <= max")
    for index in range(num):
        k = index % len(backgrounds)
        yield synthesize_case(backgrounds[k], dangers[k], lesion_generator, index, seed, options, prior)


def synthesize_case(
    background: MedImage,
    danger: np.ndarray,
    lesion_generator: LesionGenerator,
    index: int,
    seed: int,
    options: BatchOptions,
    prior: LocationModel | None = None,
) -> SyntheticCase:
    """One synthetic image with `options.per_image` lesions; see the module docstring."""
    if background.is_rgb or background.has_time or background.is_label:
        raise InputError(f"background {background.name!r} ({background.axes}) must be a grey 2D image or 3D volume")
    check_compatible(lesion_generator, background)
    slice_index = _slice_index(background, options.slice_index)
    plane = image_plane(np.asarray(background.array), slice_index)
    danger = np.asarray(danger)
    if danger.shape != background.array.shape:
        raise InputError(
            f"the danger mask has shape {danger.shape} but background {background.name!r} has {background.array.shape}; "
            "give a mask drawn on this image, or --danger auto"
        )
    permissible = image_plane(danger, slice_index).astype(bool)
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    lesions, sizes, seeds = _draw_lesions(lesion_generator, rng, options)
    candidates = weights = None
    if prior is not None:
        candidates, weights = top_candidates(prior.plane_heatmap(plane), options.candidates)
    centres = sample_placements(
        permissible, [l.mask for l in lesions], rng, candidates=candidates, weights=weights, min_spacing=options.min_spacing
    )
    scene = tuple(
        Placement(lesion, centre, i + 1, lesion_seed, size)
        for i, (lesion, centre, size, lesion_seed) in enumerate(zip(lesions, centres, sizes, seeds))
    )
    provenance = SyntheticProvenance(
        model="singan",
        model_version=medsynth.__version__,
        checkpoint=options.checkpoint,
        seed=seed,
        description=f"{len(lesions)} SinGAN lesions fused into {background.name} (image {index}, blend {options.blend})",
    )
    name = f"synthetic_{index:04d}"
    fused = fuse_scene(background, slice_index, scene, Blend(options.blend), provenance, (name, f"{name}_mask"))
    return SyntheticCase(
        index=index,
        image=fused.image,
        labels=fused.labels,
        background=str(background.metadata.get("source", background.name)),
        seed=seed,
        slice_index=slice_index,
        lesions=lesion_records(scene, image_plane(fused.labels.array, slice_index)),
    )


def manifest_rows(cases: Sequence[SyntheticCase], files: Sequence[tuple[str, str]], models: dict[str, str]) -> list[dict]:
    """One flat row per lesion (for CSV): the image and mask files, background, seeds, position, size, models."""
    rows = []
    for case, (image_file, mask_file) in zip(cases, files):
        for record in case.lesions:
            rows.append(
                {
                    "image": image_file,
                    "mask": mask_file,
                    "background": case.background,
                    "image_index": case.index,
                    "seed": case.seed,
                    "slice": "" if case.slice_index is None else case.slice_index,
                    **asdict(record),
                    **models,
                }
            )
    return rows


def write_manifest(rows: list[dict], meta: dict, out_dir: Path) -> tuple[Path, Path]:
    """Write ``manifest.csv`` (one row per lesion) and ``manifest.json`` (`meta` plus the rows) atomically."""
    text = io.StringIO()
    fields = list(rows[0]) if rows else ["image"]
    writer = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = write_text(out_dir / "manifest.csv", text.getvalue())
    json_path = write_text(out_dir / "manifest.json", json.dumps({**meta, "lesions": rows}, indent=2))
    return csv_path, json_path


def _draw_lesions(
    lesion_generator: LesionGenerator, rng: np.random.Generator, options: BatchOptions
) -> tuple[list[Lesion], list[float], list[int]]:
    lesions, sizes, seeds = [], [], []
    for _ in range(options.per_image):
        size = float(rng.uniform(*options.size_range))
        lesion, seed = draw_lesion(lesion_generator, int(rng.integers(2**31)), size, options.start_scale)
        lesions.append(lesion)
        sizes.append(size)
        seeds.append(seed)
    return lesions, sizes, seeds


def _slice_index(background: MedImage, requested: int | None) -> int | None:
    if background.array.ndim == 2:
        return None
    return background.array.shape[0] // 2 if requested is None else requested
