"""Reorienting voxel arrays into the `MedImage` layout and geometry (patient LPS world, ``t z y x c``).

Both readers describe their data the same way before handing it here: an array whose axes are named
(``"xyzt"`` for NIfTI, ``"zyx"``/``"tyxc"``/... for DICOM) and a 4x4 affine from the voxel index
``(x, y, z)`` to patient LPS millimetres ``(L, P, S)``, the DICOM/ITK convention. For 2D data the affine's
``z`` column is the plane normal. Reorientation only flips and transposes, so the result is a view of
the input (a memory map stays a memory map underneath; a 4D volume is never copied).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""NIfTI's world is RAS+, DICOM's and ours is LPS+: the same points with x and y negated."""

_MEDIMAGE_ORDER = "tzyxc"


class Geometry(NamedTuple):
    """Spacing, origin and direction in `MedImage` array order (see `medsynth.io.image`)."""

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: np.ndarray
    plane: str
    """World axes of a 2D image's (y, x) plane: ``"PL"`` for an axial one, ``""`` for 3D data, and
    ``"stored"`` when a non-axial 2D image is kept as stored (its 3D placement lives in the metadata)."""


class Layout(NamedTuple):
    """An array in `MedImage` axis order with its geometry."""

    array: np.ndarray
    axes: str
    geometry: Geometry


def dicom_affine(
    orientation: np.ndarray | None,
    pixel_spacing: tuple[float, float],
    position: np.ndarray | None,
    slice_spacing: float = 1.0,
) -> np.ndarray:
    """The (4, 4) index ``(x, y, z)`` -> LPS affine of DICOM planes.

    `orientation` is Image Orientation (Patient): the direction of increasing column index (along a
    row) then of increasing row index; `pixel_spacing` is Pixel Spacing (between rows, between columns);
    slices follow the plane normal (row direction x column direction) `slice_spacing` mm apart.
    Missing orientation or position means an axial plane at the origin.
    """
    iop = np.array([1.0, 0, 0, 0, 1, 0]) if orientation is None else np.asarray(orientation, float)
    # Stored with few decimals, so the cosines are normalised to keep spacing exactly as given.
    along_row, along_column = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    affine = np.eye(4)
    affine[:3, 0] = along_row * pixel_spacing[1]
    affine[:3, 1] = along_column * pixel_spacing[0]
    affine[:3, 2] = np.cross(along_row, along_column) * slice_spacing
    if position is not None:
        affine[:3, 3] = np.asarray(position, float)
    return affine


def to_medimage_layout(array: np.ndarray, axes: str, affine_xyz_lps: np.ndarray) -> Layout:
    """Reorient `array` (axes named by `axes`, over ``x y z t c``) so that x runs to L, y to P, z to S.

    Args:
        array: voxels; any order of its named axes, e.g. ``(X, Y, Z, T)`` with ``axes="xyzt"``.
            2D data has no ``z``.
        axes: the name of each axis of `array`.
        affine_xyz_lps: (4, 4) from voxel index ``(x, y, z)`` to LPS mm ``(L, P, S)``.

    Returns:
        The view in `MedImage` order (``t z y x c``, ``z`` only for 3D) with spacing, origin and
        direction in that order. A 2D image is reoriented only when it is axial; other planes (a
        sagittal MR slice, an ultrasound frame) keep their stored orientation, as viewers show them.
    """
    from nibabel.orientations import apply_orientation

    is_2d = "z" not in axes
    if is_2d:
        array, axes = array[..., np.newaxis], axes + "z"
    others = "".join(a for a in axes if a not in "xyz")
    xyz_first = array.transpose([axes.index(a) for a in "xyz" + others])
    ornt, axial = _orientation(affine_xyz_lps, is_2d)
    oriented = apply_orientation(xyz_first, ornt)
    oriented_axes = "xyz" + others
    target = "".join(a for a in _MEDIMAGE_ORDER if a in oriented_axes)
    out = oriented.transpose([oriented_axes.index(a) for a in target])
    if is_2d:
        out, target = out.squeeze(axis=target.index("z")), target.replace("z", "")
    return Layout(out, target, _geometry(affine_xyz_lps, ornt, axial, xyz_first.shape[:3], is_2d))


def medimage_geometry(affine_xyz_lps: np.ndarray, shape_xyz: tuple[int, ...], is_2d: bool) -> Geometry:
    """The geometry `to_medimage_layout` gives stored data of `shape_xyz` (``(X, Y, Z)``) with this affine."""
    ornt, axial = _orientation(affine_xyz_lps, is_2d)
    return _geometry(affine_xyz_lps, ornt, axial, shape_xyz, is_2d)


def from_medimage_layout(array: np.ndarray, axes: str, affine_xyz_lps: np.ndarray, file_axes: str) -> np.ndarray:
    """Undo `to_medimage_layout`: `array` in `MedImage` order (`axes`) back in the stored order `file_axes`.

    `affine_xyz_lps` is the stored data's affine, as given to `to_medimage_layout`; the result is a
    view (flips and transposes) whose axes are named by `file_axes` (e.g. ``"xyzt"``, or ``"xyt"``
    for a 2D sequence).
    """
    from nibabel.orientations import apply_orientation

    is_2d = "z" not in axes
    if is_2d:
        array, axes = array[..., np.newaxis], axes + "z"
    others = "".join(a for a in file_axes if a not in "xyz")
    xyz_first = array.transpose([axes.index(a) for a in "xyz" + others])
    ornt, _ = _orientation(affine_xyz_lps, is_2d)
    inverse = np.empty_like(ornt)
    for source, (target, flip) in enumerate(ornt):
        inverse[int(target)] = (source, flip)
    stored = apply_orientation(xyz_first, inverse)
    if "z" not in file_axes:
        stored = stored[:, :, 0]
    stored_axes = "xy" + ("z" if "z" in file_axes else "") + others
    return stored.transpose([stored_axes.index(a) for a in file_axes])


def _orientation(affine_xyz_lps: np.ndarray, is_2d: bool) -> tuple[np.ndarray, bool]:
    """nibabel's orientation array that `to_medimage_layout` applies, and whether the data is axial."""
    from nibabel.orientations import io_orientation

    ornt = io_orientation(affine_xyz_lps)
    axial = int(ornt[2, 0]) == 2
    if is_2d and not axial:
        ornt = np.array([[0, 1], [1, 1], [2, 1]])
    return ornt, axial


def _geometry(
    affine_xyz_lps: np.ndarray, ornt: np.ndarray, axial: bool, shape_xyz: tuple[int, ...], is_2d: bool
) -> Geometry:
    from nibabel.orientations import inv_ornt_aff

    affine = affine_xyz_lps @ inv_ornt_aff(ornt, tuple(shape_xyz))
    # Array order is (z, y, x) and world order (S, P, L): both reversed from the affine's.
    linear = affine[:3, :3][::-1, ::-1]
    spacing = np.linalg.norm(linear, axis=0)
    direction = linear / spacing
    origin = affine[:3, 3][::-1]
    if not is_2d:
        return Geometry(tuple(spacing), tuple(origin), direction, "")
    if axial:
        return Geometry(tuple(spacing[1:]), tuple(origin[1:]), direction[1:, 1:], "PL")
    return Geometry(tuple(spacing[1:]), (0.0, 0.0), np.eye(2), "stored")


def medimage_affine_xyz_lps(spacing, origin, direction) -> np.ndarray:
    """The (4, 4) index ``(x, y, z)`` -> LPS ``(L, P, S)`` affine of a 3D `MedImage` geometry.

    Inverse of the geometry part of `to_medimage_layout`: `spacing`, `origin` and `direction` are in
    array order (``z, y, x`` / world ``S, P, L``).
    """
    linear = np.asarray(direction, float) @ np.diag(np.asarray(spacing, float))
    affine = np.eye(4)
    affine[:3, :3] = linear[::-1, ::-1]
    affine[:3, 3] = np.asarray(origin, float)[::-1]
    return affine
