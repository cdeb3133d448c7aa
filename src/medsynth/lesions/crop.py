"""The lesion crop a SinGAN trains on: a box from a label or a rectangle, cut from a 2D image or a slice.

Boxes, planes and napari coordinates as pixels are those of `medsynth.data.geometry`. A crop comes
with the lesion's footprint mask: the label's own pixels when the box came from a label, or the
ellipse inscribed in the box when the annotator drew a plain rectangle (the corners of a rectangle
around a roundish lesion are surrounding tissue, not lesion).
"""

from __future__ import annotations

import numpy as np

from medsynth.data.geometry import MIN_CROP_SIDE, Box, crop
from medsynth.errors import InputError


def ellipse_mask(shape: tuple[int, int]) -> np.ndarray:
    """``(h, w)`` boolean ellipse inscribed in a box of `shape`."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    return ((yy + 0.5 - h / 2) / (h / 2)) ** 2 + ((xx + 0.5 - w / 2) / (w / 2)) ** 2 <= 1.0


def lesion_crop(
    plane: np.ndarray, box: Box, labels: np.ndarray | None = None, label_id: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(values, mask)`` of a lesion: float32 ``(h, w)`` values in data units and its boolean footprint.

    With `labels` and `label_id` the footprint is that label inside the box; otherwise the inscribed ellipse.
    """
    y0, x0, y1, x1 = box
    if min(y1 - y0, x1 - x0) < MIN_CROP_SIDE:
        raise InputError(
            f"the lesion box {box} is {y1 - y0}x{x1 - x0} px; draw a box of at least {MIN_CROP_SIDE}x{MIN_CROP_SIDE} px"
        )
    values = crop(plane, box).astype(np.float32)
    if labels is None or label_id is None:
        return values, ellipse_mask(values.shape)
    if labels.shape != plane.shape:
        raise InputError(f"the label map has shape {labels.shape} but the image plane has {plane.shape}; use matching layers")
    return values, crop(labels, box) == label_id
