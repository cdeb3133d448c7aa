"""npe2 writer contributions: image layers and label layers to NIfTI, on their source file's grid."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_medsynth.layers import from_layer


def write_image(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write one image layer to `path` (.nii or .nii.gz) with its spacing and orientation."""
    from medsynth.io import write_nifti

    return [str(write_nifti(from_layer(data, attributes), path))]


def write_labels(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write one labels layer as a NIfTI label map (uint8/uint16) on the grid of the image it was painted over."""
    from medsynth.io import write_nifti

    attributes = _with_image_grid(attributes, data)
    return [str(write_nifti(from_layer(data, attributes, is_label=True), path))]


def _with_image_grid(attributes: dict[str, Any], data: Any) -> dict[str, Any]:
    """`attributes` of a labels layer made in napari, given the axes and file grid of the image under it.

    napari's "new labels layer" copies an image layer's shape and transform but not its metadata;
    the image is the layer of the current viewer with the same shape and transform (the one whose
    name starts the labels' name first, as napari names them "<image> - Labels").
    """
    if "medsynth" in attributes.get("metadata", {}):
        return attributes
    import napari

    viewer = napari.current_viewer()
    if viewer is None:
        return attributes
    matches = [
        layer
        for layer in viewer.layers
        if layer.metadata.get("medsynth", {}).get("source", {}).get("source_grid")
        and tuple(layer.data.shape[: layer.ndim]) == tuple(np.shape(data))
        and _same_transform(layer, attributes)
    ]
    if not matches:
        return attributes
    name = str(attributes.get("name", ""))
    image = max(matches, key=lambda layer: name.startswith(layer.name))
    stored = image.metadata["medsynth"]
    grid = {"axes": stored["axes"], "source": {"source_grid": stored["source"]["source_grid"]}}
    return {**attributes, "metadata": {**attributes.get("metadata", {}), "medsynth": grid}}


def _same_transform(layer: Any, attributes: dict[str, Any]) -> bool:
    return all(
        np.allclose(np.asarray(attributes.get(key, default)), np.asarray(value))
        for key, value, default in (
            ("scale", layer.scale, np.ones(layer.ndim)),
            ("translate", layer.translate, np.zeros(layer.ndim)),
            ("affine", layer.affine.affine_matrix, np.eye(layer.ndim + 1)),
        )
    )
