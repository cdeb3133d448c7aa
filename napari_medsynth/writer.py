"""npe2 writer contributions: image layers and label layers to NIfTI."""

from __future__ import annotations

from typing import Any

from napari_medsynth.layers import from_layer


def write_image(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write one image layer to `path` (.nii or .nii.gz) with its spacing and orientation."""
    from medsynth.io import write_nifti

    return [str(write_nifti(from_layer(data, attributes), path))]


def write_labels(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write one labels layer as a NIfTI label map (uint8/uint16) aligned with its image."""
    from medsynth.io import write_nifti

    return [str(write_nifti(from_layer(data, attributes, is_label=True), path))]
