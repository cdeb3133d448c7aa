"""`MedImage`: the one result type of every reader and the one input type of every writer.

Conventions (docs/formats.md says more):

- `array` axes are named by `axes`, a string over ``t z y x c`` in that order: ``"yx"``, ``"zyx"``,
  ``"tyx"``, ``"tzyx"``, and ``"...c"`` for RGB(A) kept as colour. Time comes first, as napari's
  time slider expects.
- World coordinates are patient LPS millimetres (DICOM's frame: +x to the patient's Left, +y to
  Posterior, +z to Superior). Spatial array axes are reoriented so that ``x`` runs towards L, ``y``
  towards P and ``z`` towards S as closely as the data allows, so axial slices show in radiological
  convention in napari (anterior up, patient's right on the left of the screen).
- `spacing`, `origin` and `direction` are given in array axis order (``z, y, x``), like napari's
  ``scale`` and ``translate``: ``world[k] = origin[k] + sum_j direction[k, j] * spacing[j] * index[j]``
  where world axis ``k`` is the ``k``-th of (S, P, L) for 3D and (P, L) for 2D.
- Values are in the data's units (`units`): CT in HU after rescale slope/intercept, MR in its own
  intensity scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

SPATIAL_AXES = "zyx"
VALID_AXES = ("yx", "zyx", "tyx", "tzyx", "yxc", "zyxc", "tyxc", "tzyxc")


@dataclass(frozen=True)
class SyntheticProvenance:
    """What made a synthetic image; written into every synthetic file (DICOM and NIfTI)."""

    model: str
    """Model or recipe name, e.g. ``"dcgan"``."""
    model_version: str
    """Version of the software that made it, e.g. ``medsynth.__version__``."""
    checkpoint: str = ""
    """Checkpoint file name or hash the image was generated from."""
    seed: int | None = None
    """Random seed of the generation, so it can be repeated."""
    description: str = ""
    """Free text added to the derivation description (settings, lesion placement, ...)."""

    def summary(self) -> str:
        """One line for DICOM Derivation Description and NIfTI ``descrip``-style fields."""
        parts = [f"SYNTHETIC by medsynth {self.model_version}", f"recipe={self.model}"]
        if self.checkpoint:
            parts.append(f"checkpoint={self.checkpoint}")
        if self.seed is not None:
            parts.append(f"seed={self.seed}")
        if self.description:
            parts.append(self.description)
        return "; ".join(parts)


@dataclass
class MedImage:
    """A voxel array with its geometry, units and provenance.

    Readers may return a read-only memory map or view as `array`; writers never modify it.
    """

    array: np.ndarray
    axes: str
    spacing: tuple[float, ...]
    """Voxel size in mm per spatial axis, in array order (``z, y, x`` or ``y, x``)."""
    origin: tuple[float, ...] | None = None
    """World LPS position (mm, array axis order) of the first voxel's centre; zeros when unknown."""
    direction: np.ndarray | None = None
    """(n, n) matrix whose column j is the world direction of spatial array axis j; identity when unknown."""
    time_spacing: float | None = None
    """Time between frames in milliseconds, when known."""
    modality: str = "OT"
    """DICOM modality code: CT, MR, US, CR, DX, PT, NM, OT (other/unknown)."""
    units: str = ""
    """Intensity units, e.g. ``"HU"``; empty when arbitrary."""
    name: str = "image"
    is_label: bool = False
    """True for label maps (integer ids, 0 = background)."""
    synthetic: SyntheticProvenance | None = None
    """Set on generated images; every writer marks such an image as synthetic."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Source information: ``source`` path, ``series_description``, ``series_uid``, header fields."""

    def __post_init__(self) -> None:
        if self.axes not in VALID_AXES:
            raise ValueError(f"axes {self.axes!r} is not one of {VALID_AXES}")
        if self.array.ndim != len(self.axes):
            raise ValueError(
                f"array has {self.array.ndim} dimensions but axes {self.axes!r} names {len(self.axes)}"
            )
        n = self.ndim_spatial
        self.spacing = tuple(float(s) for s in self.spacing)
        if len(self.spacing) != n:
            raise ValueError(f"spacing {self.spacing} must give one value per spatial axis ({n})")
        if any(not np.isfinite(s) or s <= 0 for s in self.spacing):
            raise ValueError(f"spacing {self.spacing} must be finite and positive")
        self.origin = tuple(float(o) for o in (self.origin if self.origin is not None else (0.0,) * n))
        if len(self.origin) != n:
            raise ValueError(f"origin {self.origin} must give one value per spatial axis ({n})")
        direction = np.eye(n) if self.direction is None else np.asarray(self.direction, dtype=float)
        if direction.shape != (n, n):
            raise ValueError(f"direction must be a {n}x{n} matrix, got shape {direction.shape}")
        self.direction = direction

    @property
    def spatial_axes(self) -> str:
        return "".join(a for a in self.axes if a in SPATIAL_AXES)

    @property
    def ndim_spatial(self) -> int:
        return len(self.spatial_axes)

    @property
    def has_time(self) -> bool:
        return "t" in self.axes

    @property
    def is_rgb(self) -> bool:
        return self.axes.endswith("c")

    @property
    def affine(self) -> np.ndarray:
        """Homogeneous (n+1, n+1) matrix from spatial array index (array order) to world LPS mm (array order)."""
        n = self.ndim_spatial
        out = np.eye(n + 1)
        out[:n, :n] = self.direction @ np.diag(self.spacing)
        out[:n, n] = self.origin
        return out

    def with_array(self, array: np.ndarray, axes: str | None = None, **changes: Any) -> MedImage:
        """A new image sharing this one's geometry and metadata, with another array (and other fields)."""
        return replace(self, array=array, axes=axes or self.axes, metadata=dict(self.metadata), **changes)
