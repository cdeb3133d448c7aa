"""How a MedImage's axes appear on napari's sliders: their labels, and stacks of sequences.

napari aligns layers by their last axes. A generated stack of sequences is ``(T, N, y, x)`` in the
core (time first, as in every MedImage and file); shown in that order, a real cine ``(T, y, x)`` would
share its time slider with the stack's sample axis. Such layers are therefore shown samples first,
``(N, T, y, x)``, as a view of the same array; the permutation is kept in the layer's metadata so that
`image_order` gives writers and widgets the core's order back.

Layers get no napari ``units``: napari 0.9 shows them only in the scale bar, and only while every
layer agrees; a layer without them (a script's ``add_labels``, a points layer) or a cine beside a
volume (ms and mm on one slider) turns each later layer change into an "Inconsistent units" warning.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medsynth.io.image import MedImage

SAMPLE_LABEL = "sample"
"""Label of the axis that indexes generated samples (the core's ``metadata["sample_axis"]``)."""
ORDER_KEY = "layer_order"
"""Key in ``metadata["medsynth"]``: layer axis k shows image axis ``order[k]``."""


def axis_labels(image: MedImage) -> tuple[str, ...]:
    """napari ``axis_labels`` of `image`'s layer, in the image's axis order: t, z, y, x, or sample."""
    sample_axis = image.metadata.get("sample_axis")
    return tuple(SAMPLE_LABEL if k == sample_axis else axis for k, axis in enumerate(image.axes.rstrip("c")))


def samples_first(image: MedImage, layer: tuple[Any, dict[str, Any], str]) -> tuple[Any, dict[str, Any], str]:
    """`layer` (from `to_layer_data(image)`) with the sample axis of a stack of sequences moved first.

    Any other layer is returned as it is. The data is a transposed view, not a copy.
    """
    sample_axis = image.metadata.get("sample_axis")
    if not image.has_time or not sample_axis:
        return layer
    data, kwargs, layer_type = layer
    order = [sample_axis] + [k for k in range(data.ndim) if k != sample_axis]
    moved = dict(kwargs)
    for key in ("scale", "translate", "axis_labels"):
        if key in moved:
            moved[key] = type(moved[key])(moved[key][k] for k in order)
    if "affine" in moved:
        moved["affine"] = _permuted_affine(np.asarray(moved["affine"]), order)
    moved["metadata"] = {**kwargs["metadata"], "medsynth": {**kwargs["metadata"]["medsynth"], ORDER_KEY: order}}
    return np.transpose(data, order), moved, layer_type


def image_order(data: Any, attributes: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A layer's data and attributes in its image's axis order (undoing `samples_first`)."""
    order = attributes.get("metadata", {}).get("medsynth", {}).get(ORDER_KEY)
    if not order:
        return data, attributes
    back = list(np.argsort(order))
    restored = dict(attributes)
    for key in ("scale", "translate"):
        if key in restored:
            restored[key] = [restored[key][k] for k in back]
    if "affine" in restored:
        restored["affine"] = _permuted_affine(np.asarray(restored["affine"]), back)
    return np.transpose(data, back), restored


def _permuted_affine(affine: np.ndarray, order: list[int]) -> np.ndarray:
    """The homogeneous `affine` with its axes taken in `order` (rows and columns alike)."""
    full = list(order) + [len(order)]
    return affine[np.ix_(full, full)]
