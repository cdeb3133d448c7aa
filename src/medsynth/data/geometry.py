"""Pixel geometry of 2D planes: planes of volumes, boxes, napari coordinates as pixels, label centroids.

Boxes are ``(y0, x0, y1, x1)`` in pixel indices of the 2D plane, half-open (``y1``/``x1`` excluded),
like Python slices. Coordinates of napari layers become pixels here (`pixel_index`, `rectangle_box`):
napari centres pixel ``i`` on coordinate ``i``, so the pixel of a point is the nearest integer, and a
rectangle holds the pixels whose centres lie in ``[y0, y1) x [x0, x1)``. Coordinates are first
rounded to `COORDINATE_DECIMALS` because layers store them as float32: 64.00001 after a round trip
through world millimetres is 64.

The datasets (`medsynth.data.datasets`), the recipes and the lesion workflow (`medsynth.lesions`) all
measure planes this way, so it lives below all of them.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medsynth.errors import InputError

Box = tuple[int, int, int, int]
"""``(y0, x0, y1, x1)``, half-open pixel indices."""

COORDINATE_DECIMALS = 3
"""Coordinates are rounded to 1/1000 px before they become pixels (float32 keeps about 7 digits)."""

MIN_CROP_SIDE = 8
"""Smaller lesion crops leave no room for SinGAN's 11-pixel receptive field to learn texture."""


def image_plane(array: np.ndarray, slice_index: int | None = None) -> np.ndarray:
    """The 2D plane ``(H, W)`` of a ``(H, W)`` image or of slice `slice_index` of a ``(Z, H, W)`` volume."""
    if array.ndim == 2:
        return array
    if array.ndim != 3:
        raise InputError(f"expected a 2D image or a 3D volume, got an array of shape {array.shape}")
    if slice_index is None:
        raise InputError(f"the image is a volume of shape {array.shape}; give the slice index of the lesion")
    if not 0 <= slice_index < array.shape[0]:
        raise InputError(f"slice index {slice_index} is outside the volume's {array.shape[0]} slices")
    return array[slice_index]


def label_box(labels: np.ndarray, label_id: int, margin: int = 0) -> Box:
    """Bounding box of the pixels of `label_id` in a ``(H, W)`` label map, grown by `margin` pixels."""
    rows, cols = np.nonzero(np.asarray(labels) == label_id)
    if rows.size == 0:
        present = [int(v) for v in np.unique(labels) if v != 0][:10]
        raise InputError(f"label {label_id} is not in this plane (labels present: {present}); choose another label")
    return _clip_box((rows.min() - margin, cols.min() - margin, rows.max() + 1 + margin, cols.max() + 1 + margin), labels.shape)


def pixel_index(coords: np.ndarray | tuple[float, ...]) -> tuple[int, ...]:
    """The pixel holding each coordinate: ``round(c)`` with halves going up (10.5 -> 11), after dropping float32 noise."""
    snapped = np.round(np.asarray(coords, dtype=float), COORDINATE_DECIMALS)
    return tuple(int(v) for v in np.floor(snapped + 0.5))


def rectangle_box(vertices: np.ndarray, shape: tuple[int, int]) -> Box:
    """Box of a napari Shapes rectangle: ``(N, D)`` vertex coordinates whose last two are (y, x) in pixels.

    The box holds the pixels whose centres lie in ``[min, max)`` of the vertices per axis (corners at
    10 and 20 give pixels 10..19; at 9.5 and 19.5, the edges of those pixels, the same), clipped to
    the ``(H, W)`` `shape`. InputError when no pixel of the image is left.
    """
    vertices = np.asarray(vertices, dtype=float)
    if vertices.ndim != 2 or vertices.shape[1] < 2 or len(vertices) < 2:
        raise InputError(f"a rectangle needs at least two (y, x) vertices, got an array of shape {vertices.shape}")
    if not np.isfinite(vertices).all():
        raise InputError("the rectangle has non-finite vertex coordinates; draw it again")
    yx = np.round(vertices[:, -2:], COORDINATE_DECIMALS)
    low = np.ceil(yx.min(axis=0)).astype(int)
    high = np.ceil(yx.max(axis=0)).astype(int)
    if (high <= low).any():
        raise InputError(
            f"the rectangle from {tuple(yx.min(axis=0))} to {tuple(yx.max(axis=0))} holds no pixel centre; "
            "draw a larger box"
        )
    return _clip_box((low[0], low[1], high[0], high[1]), shape)


def crop(plane: np.ndarray, box: Box) -> np.ndarray:
    """A copy of the ``(h, w)`` part of `plane` inside `box`."""
    y0, x0, y1, x1 = box
    return np.array(plane[y0:y1, x0:x1], copy=True)


def lesion_centroids(labels: np.ndarray) -> np.ndarray:
    """``(N, 2)`` centroids (y, x) in pixels of every connected component of every id of a label map.

    A ``(Z, H, W)`` map gives the in-plane centroid of each 3D component.
    """
    labels = np.asarray(labels)
    found = []
    for label_id in np.unique(labels):
        if label_id == 0:
            continue
        components, count = ndimage.label(labels == label_id)
        if count:
            centres = np.asarray(ndimage.center_of_mass(components > 0, components, range(1, count + 1)))
            found.append(centres[:, -2:])
    return np.concatenate(found) if found else np.zeros((0, 2))


def _clip_box(box: tuple[int, int, int, int], shape: tuple[int, ...]) -> Box:
    y0, x0, y1, x1 = (int(v) for v in box)
    clipped = (max(0, y0), max(0, x0), min(shape[0], y1), min(shape[1], x1))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise InputError(f"the box {box} lies outside the {shape[0]}x{shape[1]} image; draw it on the image")
    return clipped
