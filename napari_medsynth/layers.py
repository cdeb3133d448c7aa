"""Translation between `medsynth.io.MedImage` and napari layer data tuples.

This is the only place that knows how geometry maps onto napari: `scale` is the voxel spacing (and
the frame time on a time axis), `translate` and `affine` place the data in patient LPS millimetres.
Layers keep the full description in ``metadata["medsynth"]`` so that writing a layer back loses
nothing, even after napari has normalised scale and translate.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from medsynth.errors import InputError
from medsynth.io.image import MedImage, SyntheticProvenance
from napari_medsynth.axes import axis_labels, image_order

SYNTHETIC_SUFFIX = " [SYNTHETIC]"
# Soft-tissue window (W400/L40) when a CT file names none of its own.
DEFAULT_CT_WINDOW = (-160.0, 240.0)
# Contrast from a strided subsample so that opening a large memory-mapped volume stays fast.
_MAX_CONTRAST_SAMPLES = 2_000_000

LayerDataTuple = tuple[Any, dict[str, Any], str]


def to_layer_data(image: MedImage) -> LayerDataTuple:
    """A napari (data, kwargs, layer_type) tuple showing `image` at its true place and size."""
    scale, translate, affine = _layer_geometry(image)
    kwargs: dict[str, Any] = {
        "name": layer_name(image),
        "scale": scale,
        "translate": translate,
        "metadata": {"medsynth": _describe(image)},
        "axis_labels": axis_labels(image),
    }
    if not np.allclose(affine, np.eye(len(affine))):
        kwargs["affine"] = affine
    if image.is_label:
        return image.array, kwargs, "labels"
    if image.is_rgb:
        kwargs["rgb"] = True
    else:
        kwargs["colormap"] = "gray"
        kwargs["contrast_limits"] = contrast_limits(image)
    return image.array, kwargs, "image"


def layer_name(image: MedImage) -> str:
    """The layer name; synthetic images always say so."""
    return image.name + SYNTHETIC_SUFFIX if image.synthetic and SYNTHETIC_SUFFIX not in image.name else image.name


def contrast_limits(image: MedImage) -> tuple[float, float]:
    """CT: the file's own window, else a soft-tissue window; anything else: 1st-99th percentile."""
    if image.modality == "CT" and image.units == "HU":
        if "window_center" in image.metadata and "window_width" in image.metadata:
            center, width = float(image.metadata["window_center"]), float(image.metadata["window_width"])
            return (center - width / 2, center + width / 2)
        return DEFAULT_CT_WINDOW
    sample = _strided_sample(image.array)
    low, high = np.percentile(sample, [1, 99]) if sample.size else (0.0, 1.0)
    if high <= low:
        low, high = float(sample.min(initial=0)), float(sample.max(initial=1))
    return (float(low), float(high) if high > low else float(low) + 1.0)


def _strided_sample(array: Any) -> np.ndarray:
    """At most about `_MAX_CONTRAST_SAMPLES` values, taken with a step on every axis.

    Striding each axis reads a view of a memory map; flattening a reoriented view first would copy
    the whole (possibly 4D) array.
    """
    step = max(1, int(np.ceil((array.size / _MAX_CONTRAST_SAMPLES) ** (1 / array.ndim))))
    return np.asarray(array[(slice(None, None, step),) * array.ndim], dtype=np.float64).ravel()


def from_layer(data: Any, attributes: dict[str, Any], *, is_label: bool | None = None) -> MedImage:
    """A MedImage from a layer's data and attributes (as napari hands them to writers).

    The layer's current scale, translate and affine win over the stored description, so that a
    layer the user moved or rescaled is written where it is shown. The array is not copied.
    """
    data, attributes = image_order(data, attributes)
    stored = dict(attributes.get("metadata", {}).get("medsynth", {}))
    # Keep array-likes (memmap, dask) as they are: converting would read a whole 4D layer.
    array = data if hasattr(data, "ndim") and hasattr(data, "dtype") else np.asarray(data)
    axes = stored.get("axes")
    is_rgb = bool(attributes.get("rgb", False))
    if axes is None or len(axes) != array.ndim:
        axes = _axes_for(array.ndim - (1 if is_rgb else 0), attributes.get("name", "image")) + ("c" if is_rgb else "")
    n_lead = len(axes.rstrip("c"))
    n_space = sum(a in "zyx" for a in axes)
    scale = np.asarray(attributes.get("scale", np.ones(n_lead)), dtype=float)[-n_space:]
    translate = np.asarray(attributes.get("translate", np.zeros(n_lead)), dtype=float)[-n_space:]
    affine = np.asarray(attributes.get("affine", np.eye(n_lead + 1)), dtype=float)
    linear = affine[:-1, :-1][-n_space:, -n_space:]
    origin = linear @ translate + affine[:-1, -1][-n_space:]
    time_scale = np.asarray(attributes.get("scale", [1.0]), dtype=float)[0] if "t" in axes else None
    provenance = stored.get("synthetic")
    return MedImage(
        array=array,
        axes=axes,
        spacing=tuple(np.abs(scale)),
        origin=tuple(origin),
        direction=linear * np.sign(scale),
        time_spacing=stored.get("time_spacing", time_scale),
        modality=stored.get("modality", "OT"),
        units=stored.get("units", ""),
        name=str(attributes.get("name", "image")).replace(SYNTHETIC_SUFFIX, ""),
        is_label=is_label if is_label is not None else bool(stored.get("is_label", False)),
        synthetic=SyntheticProvenance(**provenance) if provenance else None,
        metadata=dict(stored.get("source", {})),
    )


def _axes_for(ndim: int, name: str) -> str:
    """Axes of a layer of `ndim` (non-channel) dimensions; InputError beyond the 2D to 4D that images have."""
    axes = {2: "yx", 3: "zyx", 4: "tzyx"}.get(ndim)
    if axes is None:
        raise InputError(
            f"layer {name!r} has {ndim} dimensions, but medsynth uses 2D (y, x), 3D (z, y, x) and 4D (t, z, y, x) "
            "images: take a 2D to 4D part of it (e.g. one channel or one time point) as its own layer"
        )
    return axes


def _layer_geometry(image: MedImage) -> tuple[list[float], list[float], np.ndarray]:
    """napari scale, translate and affine over the layer's leading (non-channel) axes.

    napari maps data to world as ``affine @ (scale * index + translate)``; with the direction
    matrix as affine, ``translate = direction^-1 @ origin`` puts the first voxel at `origin`.
    """
    n_time = 1 if image.has_time else 0
    scale = [float(image.time_spacing or 1.0)] * n_time + list(image.spacing)
    translate = [0.0] * n_time + list(np.linalg.solve(image.direction, np.asarray(image.origin)))
    n = n_time + image.ndim_spatial
    affine = np.eye(n + 1)
    affine[n_time:n, n_time:n] = image.direction
    return scale, translate, affine


def _describe(image: MedImage) -> dict[str, Any]:
    """What the layer cannot hold by itself, kept in its metadata (plain, copyable values only).

    This includes the file grid of an image read from NIfTI (``source_grid``), so that the image, or
    labels painted over it, are written back on that grid.
    """
    plain = (str, int, float, bool, tuple, list, dict)
    source = {k: v for k, v in image.metadata.items() if isinstance(v, plain)}
    return {
        "axes": image.axes,
        "modality": image.modality,
        "units": image.units,
        "is_label": image.is_label,
        "time_spacing": image.time_spacing,
        "synthetic": asdict(image.synthetic) if image.synthetic else None,
        "source": source,
    }


def layer_image(layer: Any) -> MedImage:
    """A napari Image or Labels layer as a MedImage whose array is the layer's own (numpy, memmap or dask), not a copy."""
    data, attributes, layer_type = layer.as_layer_data_tuple()
    if layer.multiscale:
        data = data[0]
    return from_layer(data, attributes, is_label=True if layer_type == "labels" else None)
