"""npe2 sample-data contributions: the files of `medsynth.data.samples` as layers.

The samples come from unrelated patients and devices, so they share no patient frame: opened
together they would lie on top of each other (the chest radiograph, 2 m wide at the 1 mm assumed for
its missing pixel spacing, hides every other). Each one opened into a viewer that already shows
layers is placed beside them (`napari_medsynth.placement`), and what its reading assumed is shown.
The MNI152 template and its tissue maps share one grid: they open on top of each other, so that a
T1 and its grey-matter map can be picked as a co-registered pair (``kgan-fusion``).
"""

from __future__ import annotations

from napari_medsynth.layers import LayerDataTuple, to_layer_data
from napari_medsynth.notify import report_assumptions
from napari_medsynth.placement import PLACE_KEY, watch


FRAME_KEY = "sample_frame"
"""Key in a sample layer's ``metadata["medsynth"]`` naming the grid it shares with other samples."""
_FRAMES = {"mni152": "mni152", "mni152_gm": "mni152", "mni152_wm": "mni152"}


def _load(name: str) -> list[LayerDataTuple]:
    from napari import current_viewer

    from medsynth.data.samples import load_sample

    image = load_sample(name)
    report_assumptions(image)
    data, kwargs, layer_type = to_layer_data(image)
    viewer, frame = current_viewer(), _FRAMES.get(name, name)
    kwargs["metadata"]["medsynth"][FRAME_KEY] = frame
    shown = [] if viewer is None else [layer.metadata.get("medsynth", {}) for layer in viewer.layers]
    if not all(isinstance(info, dict) and info.get(FRAME_KEY) == frame for info in shown):
        kwargs["metadata"]["medsynth"][PLACE_KEY] = True
    watch(viewer)
    return [(data, kwargs, layer_type)]


def us_cine() -> list[LayerDataTuple]:
    return _load("us_cine")


def chest_xray() -> list[LayerDataTuple]:
    return _load("chest_xray")


def mr_slice() -> list[LayerDataTuple]:
    return _load("mr_slice")


def ct_slice() -> list[LayerDataTuple]:
    return _load("ct_slice")


def mni152() -> list[LayerDataTuple]:
    return _load("mni152")


def mni152_gm() -> list[LayerDataTuple]:
    return _load("mni152_gm")


def mni152_wm() -> list[LayerDataTuple]:
    return _load("mni152_wm")
