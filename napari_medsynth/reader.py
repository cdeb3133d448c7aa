"""npe2 reader contribution: NIfTI files, DICOM files and folders of DICOM series.

Whether a path is ours is `medsynth.io.recognise`'s decision, the rule `medsynth.io.read` follows: a
folder without DICOM files (a Zarr store, a folder of NIfTI files) is left to other readers.
"""

from __future__ import annotations

from collections.abc import Callable

from napari_medsynth.layers import LayerDataTuple, to_layer_data
from napari_medsynth.notify import report_assumptions, report_error
from napari_medsynth.placement import watch

# npe2's "read, but nothing to show" value: after our own notification napari must not report a
# second, vaguer error ("returned no data") or try other readers on a file we recognised.
NO_LAYERS = [(None,)]


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerDataTuple]] | None:
    """Return the reader for `path` when it is ours, else None so napari asks other plugins."""
    from medsynth.io.recognise import recognise

    paths = [path] if isinstance(path, str) else list(path)
    return read_layers if paths and all(recognise(p) is not None for p in paths) else None


def read_layers(path: str | list[str]) -> list[LayerDataTuple]:
    """Every image or series in `path` as layers; a bad file becomes a notification, not a crash.

    What reading assumed (e.g. 1 mm pixels) is shown as a warning; the viewer opens sequences at
    their first frame (`napari_medsynth.placement.watch`).
    """
    from napari import current_viewer

    from medsynth.errors import MedsynthError
    from medsynth.io import read

    paths = [path] if isinstance(path, str) else list(path)
    layers = []
    for p in paths:
        try:
            for image in read(p):
                report_assumptions(image)
                layers.append(to_layer_data(image))
        except MedsynthError as exc:
            report_error(exc)
    watch(current_viewer())
    return layers or NO_LAYERS
