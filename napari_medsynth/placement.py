"""Where new layers go: beside what the user is looking at, on the current slice, in view.

napari puts every layer at its own world coordinates. A synthetic image made from a 3D or 4D source
has no place of its own: at the world origin it is a small square hidden under the source, on a
slider position the user is not at. `place_beside` moves such a layer to the right of the layers
shown, top-aligned with them, with its first sample on the current slice; `show_new` then fits the
view to the visible layers, so that both are in it. Time axes and a volume's own z are never moved:
frame k of a synthetic sequence stays at frame k of the real cine, on the same slider.

`watch` makes a viewer show a newly opened sequence at its first frame, and moves MedSynth sample
data that would hide the other samples beside them (the samples have no common patient frame).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import numpy as np
from napari.layers import Layer

from napari_medsynth.axes import SAMPLE_LABEL

GAP_FRACTION = 0.05
"""Space between the shown layers and a layer placed beside them, as a fraction of their width."""
PLACE_KEY = "place_beside"
"""A layer whose ``metadata["medsynth"]`` holds this key is placed beside the others when it is added."""
_watched: weakref.WeakSet = weakref.WeakSet()


def place_beside(viewer, layer: Layer, reference: Sequence[Layer] = ()) -> None:
    """Translate `layer` (not yet in `viewer`) beside the `reference` layers (default: the visible ones).

    x: past the reference's extent; y: aligned with its top; a sample axis: the first sample on the
    viewer's current slider position. Other axes (time, a volume's z) keep their place, so that frames
    stay in step with the real ones. Nothing moves when there is nothing to be beside.
    """
    shown = [other for other in (reference or [o for o in viewer.layers if o.visible]) if other is not layer]
    if not shown:
        return
    target = viewer.layers.get_extent(shown).world  # (2, n_ref), right-aligned like the viewer's dims
    own = layer.extent.world  # (2, layer.ndim)
    labels = layer.axis_labels
    point = viewer.dims.point
    shift = np.zeros(layer.ndim)
    for k in range(1, layer.ndim + 1):  # from the last axis, as napari aligns layers
        if k == 1:
            width = target[1, -1] - target[0, -1]
            shift[-k] = target[1, -1] + GAP_FRACTION * width - own[0, -k]
        elif k == 2:
            shift[-k] = target[0, -2] - own[0, -2] if target.shape[1] >= 2 else 0.0
        elif labels[-k] == SAMPLE_LABEL and k <= len(point):
            shift[-k] = point[-k] - own[0, -k]
    linear = np.asarray(layer.affine.affine_matrix)[:-1, :-1]
    layer.translate = np.asarray(layer.translate) + np.linalg.solve(linear, shift)


def show_new(viewer, layer: Layer) -> None:
    """Fit the view to the visible layers and show `layer`'s first frame on its time slider, if it has one."""
    fit_visible(viewer)
    _first_frame(viewer, layer)


def fit_visible(viewer) -> None:
    """Reset the view so that it fits the visible layers; napari's reset_view fits hidden ones too.

    In 2D the fitted zoom is scaled by the smallest ratio of every layer's extent to the visible
    layers', which keeps the visible ones inside the canvas whatever its size (napari 0.9's
    ``reset_view(layers=...)`` fails when the layers differ in ndim).
    """
    viewer.reset_view()
    shown = [layer for layer in viewer.layers if layer.visible]
    if viewer.dims.ndisplay != 2 or not shown or len(shown) == len(viewer.layers):
        return
    axes = [axis - viewer.dims.ndim for axis in viewer.dims.displayed]  # right-aligned, as extents are
    every = np.ptp(viewer.layers.extent.world[:, axes], axis=0)
    visible = viewer.layers.get_extent(shown).world[:, axes]
    viewer.camera.center = tuple(visible.mean(axis=0))
    viewer.camera.zoom *= float(np.min(every / np.maximum(np.ptp(visible, axis=0), 1e-6)))


def watch(viewer) -> None:
    """Have `viewer` show each new sequence at its first frame and place sample data beside the rest."""
    if viewer is None or viewer in _watched:
        return
    _watched.add(viewer)
    ref = weakref.ref(viewer)  # the layer list must not keep a closed viewer alive
    viewer.layers.events.inserted.connect(lambda event: ref() is not None and _on_inserted(ref(), event.value))


def _on_inserted(viewer, layer: Layer) -> None:
    info = layer.metadata.get("medsynth")
    if not isinstance(info, dict):
        return
    if info.pop(PLACE_KEY, False):
        others = [other for other in viewer.layers if other is not layer]
        if others:
            place_beside(viewer, layer, others)
            viewer.reset_view()
    _first_frame(viewer, layer)


def _first_frame(viewer, layer: Layer) -> None:
    if "t" not in layer.axis_labels:
        return
    k = layer.axis_labels.index("t")
    world_axis = viewer.dims.ndim - layer.ndim + k
    viewer.dims.set_point(world_axis, layer.extent.world[0, k])
