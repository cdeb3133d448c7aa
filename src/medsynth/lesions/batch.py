"""Batch lesion synthesis: N synthetic images with lesions, their label maps and a manifest.

Image ``i`` uses background ``i mod len(backgrounds)`` and its own random stream
(``SeedSequence([seed, i])``), so any image can be made again from the seed and its index. For each
image, `per_image` lesions are drawn from the SinGAN (size factor uniform in `size_range`, a lesion
with an empty generated mask is drawn again), placed in ``C_final`` (the top candidates of the
location model's heatmap on the background plane, weighted by their density, or every permissible
pixel without one) with no lesion pixel in the danger zone and no two lesions overlapping, then fused
(`medsynth.lesions.fusion`). The location model is the kernel-density prior or a learned heatmap
(`medsynth.lesions.location.LocationModel`).
Volumes get their lesions in one slice (`slice_index`, the middle one by default).
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
from medsynth.errors import InputError
from medsynth.io.image import MedImage, SyntheticProvenance
from medsynth.lesions.crop import image_plane
from medsynth.lesions.fusion import Lesion, fuse
from medsynth.lesions.location import LocationModel, top_candidates
from medsynth.lesions.placement import sample_placements
from medsynth.lesions.scene import assemble, check_compatible, draw_lesion
from medsynth.lesions.singan_training import LesionGenerator


@dataclass(frozen=True)
class LesionRecord:
    """One placed lesion, as the manifest lists it (pixel indices of the background plane).

    The box and centroid are those of the lesion's label pixels (what a detector trains on); the
    patch is the generated ``(patch_height, patch_width)`` image centred at ``(centre_y, centre_x)``,
    whose footprint (the label pixels) is usually smaller.
    """

    label_id: int
    bbox_y0: int
    bbox_x0: int
    bbox_y1: int
    """Exclusive end row of the tight bounding box."""
    bbox_x1: int
    """Exclusive end column of the tight bounding box."""
    centroid_y: float
    centroid_x: float
    pixels: int
    centre_y: int
    centre_x: int
    patch_height: int
    patch_width: int
    size_factor: float
    lesion_seed: int


def label_geometry(labels: np.ndarray, label_id: int) -> dict[str, int | float]:
    """Tight bounding box ``bbox_y0, bbox_x0, bbox_y1, bbox_x1`` (ends exclusive), centroid and pixel count of `label_id` in ``(H, W)`` `labels`."""
    pixels = np.argwhere(np.asarray(labels) == label_id)
    if len(pixels) == 0:
        raise InputError(f"label {label_id} has no pixel in the label map; place the lesion again")
    (y0, x0), (y1, x1) = pixels.min(axis=0), pixels.max(axis=0) + 1
    cy, cx = pixels.mean(axis=0)
    return {
        "bbox_y0": int(y0),
        "bbox_x0": int(x0),
        "bbox_y1": int(y1),
        "bbox_x1": int(x1),
        "centroid_y": round(float(cy), 3),
        "centroid_x": round(float(cx), 3),
        "pixels": len(pixels),
    }


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
    result = fuse(plane, lesions, centres, blend=options.blend)
    records = [
        LesionRecord(
            label_id=i + 1,
            **label_geometry(result.labels, i + 1),
            centre_y=c[0],
            centre_x=c[1],
            patch_height=l.mask.shape[0],
            patch_width=l.mask.shape[1],
            size_factor=size,
            lesion_seed=s,
        )
        for i, (l, c, size, s) in enumerate(zip(lesions, centres, sizes, seeds))
    ]
    description = f"{len(lesions)} SinGAN lesions fused into {background.name} (image {index}, blend {options.blend})"
    if background.synthetic is not None:  # a generated background: name its model too
        description += f"; background {background.synthetic.summary()}"
    provenance = SyntheticProvenance(
        model="singan",
        model_version=medsynth.__version__,
        checkpoint=options.checkpoint,
        seed=seed,
        description=description,
    )
    image, labels = assemble(background.array, result.image, result.labels, slice_index)
    name = f"synthetic_{index:04d}"
    return SyntheticCase(
        index=index,
        image=background.with_array(image, synthetic=provenance, name=name),
        labels=background.with_array(labels, synthetic=provenance, name=f"{name}_mask", is_label=True, units=""),
        background=str(background.metadata.get("source", background.name)),
        seed=seed,
        slice_index=slice_index,
        lesions=records,
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
