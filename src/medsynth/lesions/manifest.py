"""What a manifest says about each placed lesion: one record, the same for ``medsynth lesions`` and the
Lesions widget's export.

Positions are pixel indices of the background plane. The box and centroid are those of the lesion's
label pixels (what a detector trains on); the patch is the generated ``(patch_height, patch_width)``
image centred at ``(centre_y, centre_x)``, whose footprint (the label pixels) is usually smaller.
``lesion_seed`` draws the same lesion again (`medsynth.lesions.scene.draw_lesion`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medsynth.errors import InputError
from medsynth.lesions.scene import Scene


@dataclass(frozen=True)
class LesionRecord:
    """One placed lesion, as a manifest lists it; see the module docstring."""

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
    """Tight bounding box ``bbox_y0, bbox_x0, bbox_y1, bbox_x1`` (ends exclusive), centroid and pixel count
    of `label_id` in ``(H, W)`` `labels`."""
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


def lesion_records(scene: Scene, labels: np.ndarray) -> list[LesionRecord]:
    """The record of each lesion of `scene`, measured in the ``(H, W)`` label map of its fusion."""
    return [
        LesionRecord(
            label_id=p.label_id,
            **label_geometry(labels, p.label_id),
            centre_y=p.centre[0],
            centre_x=p.centre[1],
            patch_height=p.lesion.mask.shape[0],
            patch_width=p.lesion.mask.shape[1],
            size_factor=p.size,
            lesion_seed=p.seed,
        )
        for p in scene
    ]

