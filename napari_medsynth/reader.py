"""npe2 reader contribution: NIfTI files, DICOM files and folders of DICOM series."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from napari_medsynth.layers import LayerDataTuple, to_layer_data
from napari_medsynth.notify import report_assumptions, report_error
from napari_medsynth.placement import watch

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# npe2's "read, but nothing to show" value: after our own notification napari must not report a
# second, vaguer error ("returned no data") or try other readers on a file we recognised.
NO_LAYERS = [(None,)]
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerDataTuple]] | None:
    """Return the reader for `path` when it is ours, else None so napari asks other plugins."""
    paths = [path] if isinstance(path, str) else list(path)
    return read_layers if paths and all(_is_ours(Path(p)) for p in paths) else None


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


def _is_ours(path: Path) -> bool:
    name = path.name.lower()
    if path.is_dir():
        return True
    return name.endswith(NIFTI_SUFFIXES) or name.endswith(DICOM_SUFFIXES) or _has_dicom_preamble(path)


def _has_dicom_preamble(path: Path) -> bool:
    """DICOM files often have no extension: recognise them by the 'DICM' magic at byte 128."""
    try:
        with path.open("rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False
