"""A scene: the lesions placed on one background plane, as immutable values, and its fusion.

The Lesions widget's session (`medsynth.lesions.session.LesionSession`) keeps its placements as a
`Scene` (so Undo is keeping the previous tuple) and the batch tool (`medsynth.lesions.batch`) makes
one scene per image; both draw lesions with `draw_lesion` and fuse with `fuse_scene`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from medsynth.data.geometry import Box, image_plane
from medsynth.errors import InputError
from medsynth.io.image import MedImage, SyntheticProvenance
from medsynth.lesions.fusion import Blend, Lesion, fuse
from medsynth.lesions.placement import Point, box_centre, footprint_slices, place_by_hand
from medsynth.lesions.singan_training import LesionGenerator, sample_lesions

MAX_DRAWS = 20
"""Draws per lesion before giving up on a model whose generated masks keep coming out empty."""


@dataclass(frozen=True)
class Placement:
    """One placed lesion: its patch, its centre ``(y, x)`` in the background plane, label id, seed and size factor."""

    lesion: Lesion
    centre: Point
    label_id: int
    seed: int
    size: float = 1.0
    """The size factor the lesion was drawn with (relative to the model's training crop)."""


Scene = tuple[Placement, ...]


@dataclass(frozen=True)
class FusedScene:
    """A scene fused into its background: both on the background's grid, marked synthetic."""

    image: MedImage
    """The fused image, in the background's units."""
    labels: MedImage
    """The label map, one id per lesion, 0 elsewhere."""


def lesion_seed(seed: int, label_id: int) -> int:
    """The seed of lesion `label_id` drawn under base `seed`: distinct per lesion, repeatable."""
    return int(np.random.SeedSequence([seed, label_id]).generate_state(1)[0])


def draw_lesion(generator: LesionGenerator, seed: int, size: float, start_scale: int) -> tuple[Lesion, int]:
    """A lesion with a non-empty footprint and the seed that drew it (the next seeds if a mask came out empty)."""
    for attempt in range(MAX_DRAWS):
        lesion = sample_lesions(generator, 1, seed + attempt, start_scale=start_scale, size=size)[0]
        if lesion.mask.any():
            return lesion, seed + attempt
    raise InputError(
        f"the lesion model drew {MAX_DRAWS} lesions with empty masks; train it longer, or raise the variability "
        "scale so that lesions keep the crop's layout"
    )


def check_compatible(generator: LesionGenerator, background: MedImage) -> None:
    """InputError when the lesion model's training crop and `background` differ in known modality or units.

    Lesions are fused in the crop's units, so an HU lesion in an MR image would be nonsense. A side
    that does not know its modality (``OT`` or empty) or its units (empty) is not compared.
    """
    crop_modality, crop_units = str(generator.data.get("modality", "OT")), str(generator.data.get("units", ""))
    known = {"OT", ""}
    clashes = []
    if crop_modality not in known and background.modality not in known and crop_modality != background.modality:
        clashes.append(f"modality {crop_modality} vs {background.modality}")
    if crop_units and background.units and crop_units != background.units:
        clashes.append(f"units {crop_units!r} vs {background.units!r}")
    if clashes:
        source = generator.path.name if generator.path else "the lesion model"
        raise InputError(
            f"{source} was trained on a crop that does not match background {background.name!r} "
            f"({', '.join(clashes)}); train or load a lesion model on an image of the same kind"
        )


def box_placement(generator: LesionGenerator, box: Box) -> tuple[Point, float]:
    """Centre and size factor of a lesion drawn to fill `box` (the model's crop scaled to the box, within 0.1 to 8)."""
    height, width = generator.model.shapes[-1]
    size = float(np.clip(min((box[2] - box[0]) / height, (box[3] - box[1]) / width), 0.1, 8.0))
    return box_centre(box), size


def next_label_id(scene: Scene) -> int:
    """The label id of the next lesion placed into `scene`."""
    return max((p.label_id for p in scene), default=0) + 1


def placed_mask(placement: Placement, shape: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` boolean footprint of `placement` in a plane of `shape`."""
    mask = np.zeros(shape, dtype=bool)
    rows, cols = footprint_slices(placement.centre, placement.lesion.mask.shape)
    mask[rows, cols] = placement.lesion.mask
    return mask


def taken_pixels(scene: Scene, shape: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` pixels covered by the lesions of `scene`."""
    taken = np.zeros(shape, dtype=bool)
    for placement in scene:
        taken |= placed_mask(placement, shape)
    return taken


def edited_scene(scene: Scene, labels: np.ndarray) -> Scene:
    """The scene after the annotator edited its ``(H, W)`` label map: deleted ids go, moved ids follow their pixels.

    A lesion moves by the shift between the centroid of its label's pixels now and of its footprint as placed.
    """
    kept = []
    for placement in scene:
        now = np.argwhere(labels == placement.label_id)
        if len(now) == 0:
            continue
        before = np.argwhere(placed_mask(placement, labels.shape)).mean(axis=0)
        dy, dx = np.rint(now.mean(axis=0) - before).astype(int)
        kept.append(replace(placement, centre=(placement.centre[0] + int(dy), placement.centre[1] + int(dx))))
    return tuple(kept)


def check_scene(scene: Scene, permissible: np.ndarray) -> None:
    """InputError unless every lesion of `scene` lies on permissible pixels, inside the plane, on no other lesion."""
    taken = np.zeros(permissible.shape, dtype=bool)
    for placement in scene:
        place_by_hand(permissible, placement.lesion.mask, placement.centre, taken)
        taken |= placed_mask(placement, permissible.shape)


def assemble(background: np.ndarray, plane: np.ndarray, labels: np.ndarray, slice_index: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The full-size image and label map: the fused `plane` and its `labels` put into a copy of `background`.

    `slice_index` is the plane's index along the first axis of a volume, None for a 2D background.
    """
    if slice_index is None:
        return plane, labels
    volume = np.array(background, dtype=np.float32, copy=True)
    volume[slice_index] = plane
    label_volume = np.zeros(volume.shape, dtype=np.uint16)
    label_volume[slice_index] = labels
    return volume, label_volume


def plane_of(array: np.ndarray, slice_index: int | None) -> np.ndarray:
    """`image_plane` of `array`, reading only that slice of a memory-mapped or dask volume."""
    return np.asarray(image_plane(array, slice_index))


def fuse_scene(
    background: MedImage,
    slice_index: int | None,
    scene: Scene,
    blend: Blend,
    provenance: SyntheticProvenance,
    names: tuple[str, str],
) -> FusedScene:
    """The lesions of `scene` fused into plane `slice_index` of `background` (None: a 2D image), on its grid.

    `names` are those of the image and of the label map; `provenance` marks both synthetic. A generated
    background's own provenance joins its description, so that the result names both models.
    """
    if background.synthetic is not None:
        background_note = f"; background {background.synthetic.summary()}"
        provenance = replace(provenance, description=provenance.description + background_note)
    result = fuse(
        plane_of(background.array, slice_index),
        [p.lesion for p in scene],
        [p.centre for p in scene],
        ids=[p.label_id for p in scene],
        blend=blend.name,
        feather_px=blend.feather_px,
    )
    image, labels = assemble(background.array, result.image, result.labels, slice_index)
    return FusedScene(
        image=background.with_array(image, synthetic=provenance, name=names[0]),
        labels=background.with_array(labels, synthetic=provenance, name=names[1], is_label=True, units=""),
    )
