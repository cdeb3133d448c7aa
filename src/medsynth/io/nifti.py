"""NIfTI-1/2 (``.nii``, ``.nii.gz``) reading and writing with nibabel.

Reading: the file's ``(x, y, z[, t])`` voxels become a `MedImage` in ``t z y x`` order, reoriented to
x -> L, y -> P, z -> S by flips and transposes only (views). An uncompressed file is memory-mapped
read-only, so a 4D volume costs no more memory than the pages touched; ``scl_slope``/``scl_inter``,
when set, are applied slab by slab into one float32 array.

Writing: an image still on the grid of the file it was read from (``metadata["source_grid"]``) goes
back on that grid: the file's voxel order, shape, sform and qform with their codes, so that other
tools pair it with the file by index. Other images get a RAS affine of the `MedImage` layout stored
as both sform and qform. Time spacing goes into ``pixdim[4]`` (ms), label maps are uint8/uint16, and
synthetic images say so in ``descrip`` and ``intent_name``; a header extension keeps the full
provenance, modality and units.
"""

from __future__ import annotations

import fnmatch
import gzip
import json
import os
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from medsynth.atomic import atomic_path
from medsynth.errors import InputError, InputWarning, UnreadableFileError
from medsynth.io.image import MedImage, SyntheticProvenance
from medsynth.io.library_logs import held_back
from medsynth.io.mapped import PageRelease
from medsynth.io.orientation import (
    RAS_TO_LPS,
    Geometry,
    from_medimage_layout,
    medimage_affine_xyz_lps,
    medimage_geometry,
    to_medimage_layout,
)
from medsynth.io.provenance import provenance_from_summary

NIFTI_SUFFIXES = (".nii", ".nii.gz")
LABEL_NAME_PATTERNS = ("*_seg*", "*-seg*", "seg_*", "*aseg*", "*dseg*", "*label*", "*mask*")
"""File names (lower case, without suffix) of integer images read as label maps."""
SYNTHETIC_INTENT = "SYNTHETIC"
_EXTENSION_PREFIX = b"medsynth:"
_EXTENSION_CODE = "comment"
_SLAB_BYTES = 64 * 2**20
"""Work on about this much data at a time, so checks and scaling never need a second full copy."""
_SPACE_TO_MM = {"meter": 1000.0, "micron": 0.001}
_IMPLAUSIBLE_SECONDS = 100.0
_TIME_TO_MS = {"sec": 1000.0, "msec": 1.0, "usec": 0.001, "unknown": 1000.0}
_GRID_TOLERANCE = 1e-4
"""Relative difference of geometry taken as equal: a layer's scale and translate round-trip in float64."""
_MIN_VOLUME_RATIO = 1e-6
"""An affine whose determinant is below this fraction of its column lengths' product is singular."""
_GZIP_LEVEL = 1
"""nibabel's own level for .nii.gz: most of the size gain at a fraction of the time of level 9."""


def nifti_stem(path: Path) -> str:
    """The file name without ``.nii``/``.nii.gz``."""
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def is_nifti_path(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def looks_like_label_name(path: Path) -> bool:
    """True when the file name follows a label-map convention (``*_seg*``, ``*label*``, ``*mask*``...)."""
    stem = nifti_stem(path).lower()
    return any(fnmatch.fnmatch(stem, pattern) for pattern in LABEL_NAME_PATTERNS)


def read_nifti(path: Path, *, as_label: bool | None = None) -> MedImage:
    """Read one NIfTI file.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file of 2D, 3D or 4D data.
        as_label: True reads a label map, False an image; None decides by integer dtype and a label
            file name (`LABEL_NAME_PATTERNS`).

    Returns:
        A `MedImage` ``"yx"``, ``"zyx"``, ``"tyx"`` or ``"tzyx"``.

    Raises:
        UnreadableFileError: not a NIfTI file, or truncated.
        InputError: 5D or more, non-finite values, or non-integer values asked to be labels.
    """
    import nibabel as nib

    try:
        with held_back("nibabel.global") as repairs:
            img = nib.load(path, mmap="r")
    except Exception as exc:
        raise UnreadableFileError(
            f"{path}: cannot be read as NIfTI ({exc}). Check that the file was copied completely, or "
            "re-export it as .nii/.nii.gz."
        ) from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise UnreadableFileError(f"{path}: is a {type(img).__name__}, not NIfTI; save it as .nii or .nii.gz.")
    header = img.header
    file_axes = _file_axes(path, img.shape)
    raw = _unscaled_data(img, path)
    raw = raw[tuple(0 if a == "-" else slice(None) for a in file_axes)]
    axes = file_axes.replace("-", "")
    slope, inter = img.dataobj.slope, img.dataobj.inter
    scaled = slope != 1 or inter != 0
    data = _scaled(raw, slope, inter) if scaled else raw
    if data.dtype.kind == "f":
        _check_finite(data, path)

    space_unit, time_unit = header.get_xyzt_units()
    notes = [_repaired(path, repairs)] if repairs else []
    affine_ras, affine_note = _world_affine(header, img.shape, path)
    notes += [affine_note] if affine_note else []
    affine_lps = _affine_lps(affine_ras, space_unit)
    label = as_label if as_label is not None else (data.dtype.kind in "iu" and looks_like_label_name(path))
    if label and data.dtype.kind == "f":
        data = _label_array(data, path)
    layout = to_medimage_layout(data, axes, affine_lps)

    stored = _stored_fields(header)
    synthetic = _synthetic_from_header(header, stored)
    metadata: dict[str, Any] = {
        "source": str(path),
        "format": "NIfTI",
        "source_grid": _source_grid(header, img.shape, file_axes, affine_ras),
        "descrip": _text(header["descrip"]),
        "intent_name": _text(header["intent_name"]),
    }
    if scaled:
        metadata["scl_slope"], metadata["scl_inter"] = float(slope), float(inter)
    if notes:
        metadata["notes"] = notes
    if layout.geometry.plane:
        metadata["plane"] = layout.geometry.plane
    time_spacing = None
    if "t" in axes:
        time_spacing, note = _time_spacing_ms(float(header.get_zooms()[3]), time_unit)
        if note:
            metadata["time_note"] = note
    return MedImage(
        array=layout.array,
        axes=layout.axes,
        spacing=layout.geometry.spacing,
        origin=layout.geometry.origin,
        direction=layout.geometry.direction,
        time_spacing=time_spacing,
        modality=stored.get("modality", "OT"),
        units=stored.get("units", ""),
        name=nifti_stem(path),
        is_label=bool(label),
        synthetic=synthetic,
        metadata=metadata,
    )


def write_nifti(image: MedImage, path: str | os.PathLike[str]) -> Path:
    """Write `image` to a ``.nii``/``.nii.gz`` file atomically and return its path.

    An image read from a NIfTI file, whose geometry and spatial shape are still those read, is written
    on that file's grid: its voxel order, shape, sform and qform with their codes, and spatial units.
    Any other image is stored ``(x, y, z[, t])`` in the `MedImage` layout with a RAS affine (sform and
    qform, code 1) in mm; a 2D sequence as ``(x, y, 1, t)``. Time spacing goes to ``pixdim[4]`` in ms,
    label maps are uint8 or uint16, and a synthetic image gets ``descrip`` ``"SYNTHETIC by medsynth ..."``
    (80 bytes at most) and ``intent_name`` ``"SYNTHETIC"``.

    Raises:
        InputError: wrong suffix, RGB data, non-finite values, or labels that are negative, not
            integers or above 65535.
    """
    import nibabel as nib

    path = Path(path)
    if not is_nifti_path(path):
        raise InputError(f"{path}: a NIfTI file name must end with .nii or .nii.gz; rename the output.")
    if image.is_rgb:
        raise InputError(
            f"{image.name!r} is RGB ({image.axes}); NIfTI output takes grayscale or labels. Read the "
            "source without keep_rgb=True, or convert the image to grayscale first."
        )
    data = _label_array(image.array, path) if image.is_label else _nifti_dtype(image.array)
    if data.dtype.kind == "f":
        _check_finite(data, path)
    img = _on_source_grid(image, data)
    if img is None:
        img = _in_medimage_layout(image, data)
    header = img.header
    if image.has_time:
        zooms = header.get_zooms()
        header.set_zooms(zooms[:3] + (float(image.time_spacing or 1.0),) + zooms[4:])
    if image.is_label:
        header.set_intent("label")
    if image.synthetic is not None:
        header["descrip"] = _synthetic_descrip(image.synthetic)
        header["intent_name"] = SYNTHETIC_INTENT.encode()
    else:
        header["descrip"] = _ascii(image.name, 80)
    header.extensions.append(nib.nifti1.Nifti1Extension(_EXTENSION_CODE, _extension_bytes(image)))
    return _save_atomically(img, path)


def _in_medimage_layout(image: MedImage, data: np.ndarray) -> Any:
    """`data` as ``(x, y, z[, t])`` (``(x, y, 1, t)`` for a 2D sequence) with the image's RAS affine."""
    import nibabel as nib

    file_order = "".join(a for a in "xyzt" if a in image.axes)
    data = data.transpose([image.axes.index(a) for a in file_order])
    if image.has_time and image.ndim_spatial == 2:
        data = data[:, :, np.newaxis]  # time is NIfTI's fourth axis, after a single slice
    affine_ras = RAS_TO_LPS @ _affine_xyz_lps(image)
    img = nib.Nifti1Image(data, affine_ras)
    img.set_sform(affine_ras, code=1)
    img.set_qform(affine_ras, code=1)
    img.header.set_xyzt_units("mm", "msec")
    return img


def _on_source_grid(image: MedImage, data: np.ndarray) -> Any | None:
    """`data` in its source file's voxel order with that file's sform, qform and codes, or None.

    None unless the image came from a NIfTI file (``metadata["source_grid"]``) and still has the
    geometry and spatial shape read from it; a layer the user moved or resampled is no longer on it.
    """
    import nibabel as nib

    grid = image.metadata.get("source_grid")
    if not isinstance(grid, dict) or grid.get("format") != "NIfTI" or (image.has_time and "t" not in grid["axes"]):
        return None
    stored_axes = grid["axes"] if image.has_time else grid["axes"].partition("t")[0]
    spatial = "".join(a for a in stored_axes if a in "xyz")
    if spatial != "".join(a for a in "xyz" if a in image.axes):
        return None
    shape = dict(zip(grid["axes"], grid["shape"]))
    shape_xyz = tuple(shape.get(a, 1) for a in "xyz")
    affine_ras = np.asarray(grid["affine"], dtype=float)
    affine_lps = _affine_lps(affine_ras, grid["units"][0])
    if not _same_geometry(image, medimage_geometry(affine_lps, shape_xyz, image.ndim_spatial == 2)):
        return None
    stored = from_medimage_layout(data, image.axes, affine_lps, stored_axes.replace("-", ""))
    if tuple(stored.shape[: len(spatial)]) != tuple(shape[a] for a in spatial):
        return None
    for i, axis in enumerate(stored_axes):
        if axis == "-":
            stored = np.expand_dims(stored, i)
    img = nib.Nifti1Image(stored, None)
    for name, setter in (("qform", img.set_qform), ("sform", img.set_sform)):
        # An unusable matrix was replaced by the affine used on reading; write that one back.
        matrix = np.asarray(grid[name], dtype=float)
        setter(matrix if _usable(matrix) else affine_ras, code=int(grid[f"{name}_code"]))
    img.header.set_xyzt_units(grid["units"][0], "msec")
    return img


def _same_geometry(image: MedImage, geometry: Geometry) -> bool:
    """True when `image` has `geometry` up to the rounding of a trip through napari's scale and translate."""
    return (
        np.allclose(image.spacing, geometry.spacing, rtol=_GRID_TOLERANCE, atol=0)
        and np.allclose(image.origin, geometry.origin, rtol=0, atol=_GRID_TOLERANCE * min(geometry.spacing))
        and np.allclose(image.direction, geometry.direction, rtol=0, atol=_GRID_TOLERANCE)
    )


def _world_affine(header: Any, shape: tuple[int, ...], path: Path) -> tuple[np.ndarray, str]:
    """The voxel -> RAS affine, chosen as nibabel and ITK do, and a note when a header field was unusable.

    The sform when its code is set, else the qform when its code is set, else a diagonal from pixdim
    (nibabel's base affine); a zero, singular or non-finite one is passed over with an `InputWarning`.
    A 2D file's zero slice axis is the plane's normal, not a defect.
    """
    candidates = [
        (name, _with_slice_normal(getter(), shape))
        for name, getter in (("sform", header.get_sform), ("qform", header.get_qform))
        if int(header[f"{name}_code"]) > 0
    ]
    unusable = [name for name, affine in candidates if not _usable(affine)]
    chosen = next(((name, affine) for name, affine in candidates if _usable(affine)), None)
    if chosen is None:
        # nibabel has set zero voxel sizes to 1 on loading (`_repaired` says so).
        base = header.get_base_affine()
        if not _usable(base):
            unusable.append("pixdim")
        chosen = ("pixdim", base if _usable(base) else np.eye(4))
    if not unusable:
        return chosen[1], ""
    used = {"qform": "the qform", "pixdim": "a diagonal from pixdim" if _usable(chosen[1]) else "1 mm voxels"}[chosen[0]]
    note = (
        f"{path}: its {' and '.join(unusable)} {'is' if len(unusable) == 1 else 'are'} zero, singular or not finite, "
        f"so {used} is used instead, as nibabel and ITK do. Fix the header and save the file again (e.g. with "
        "nibabel: img.set_sform(affine, code=1))."
    )
    warnings.warn(note, InputWarning, stacklevel=3)
    return chosen[1], note


def _repaired(path: Path, repairs: list[str]) -> str:
    """Warn about the header fields nibabel repaired while loading `path`; returns the warning."""
    note = (
        f"{path}: its header was repaired on reading ({'; '.join(repairs)}), as nibabel does. Fix the header "
        "and save the file again."
    )
    warnings.warn(note, InputWarning, stacklevel=3)
    return note


def _with_slice_normal(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`affine` with a zero third column of a single-slice file replaced by the unit normal of its plane."""
    if (len(shape) > 2 and shape[2] > 1) or np.any(affine[:3, 2]):
        return affine
    normal = np.cross(affine[:3, 0], affine[:3, 1])
    length = np.linalg.norm(normal)
    if not np.isfinite(length) or length == 0:
        return affine
    out = affine.copy()
    out[:3, 2] = normal / length
    return out


def _usable(affine: np.ndarray) -> bool:
    """A finite affine whose axes are neither zero nor (nearly) parallel."""
    if not np.all(np.isfinite(affine)):
        return False
    linear = affine[:3, :3]
    lengths = np.linalg.norm(linear, axis=0)
    return bool(np.all(lengths > 0) and abs(np.linalg.det(linear)) > _MIN_VOLUME_RATIO * np.prod(lengths))


def _affine_lps(affine_ras: np.ndarray, space_unit: str) -> np.ndarray:
    """Voxel -> LPS mm from a file's voxel -> RAS affine in its spatial unit."""
    affine_lps = RAS_TO_LPS @ affine_ras
    affine_lps[:3] *= _SPACE_TO_MM.get(space_unit, 1.0)
    return affine_lps


def _source_grid(header: Any, shape: tuple[int, ...], file_axes: str, affine_ras: np.ndarray) -> dict[str, Any]:
    """What writing back on the file's grid needs, as plain values (it travels in layer metadata)."""
    return {
        "format": "NIfTI",
        "shape": [int(n) for n in shape],
        "axes": file_axes,
        "affine": affine_ras.tolist(),
        "sform": header.get_sform().tolist(),
        "sform_code": int(header["sform_code"]),
        "qform": header.get_qform().tolist(),
        "qform_code": int(header["qform_code"]),
        "units": list(header.get_xyzt_units()),
    }


def _file_axes(path: Path, shape: tuple[int, ...]) -> str:
    """Names of the file's axes (``x y z t``), ``-`` for singleton ones that are dropped."""
    n = len(shape)
    while n > 4 and shape[n - 1] == 1:
        n -= 1
    if n > 4:
        raise InputError(
            f"{path}: has {n} dimensions {shape}; medsynth reads 2D, 3D and 4D (x, y, z, time). "
            "Split the extra dimension into separate files first (e.g. nibabel's four_to_three or "
            "fslsplit), or keep one component."
        )
    if n < 2:
        raise InputError(f"{path}: has shape {shape}; an image needs at least two dimensions.")
    axes = list("xyzt"[:n]) + ["-"] * (len(shape) - n)
    if n == 4 and shape[3] == 1:
        axes[3] = "-"
    if n >= 3 and shape[2] == 1:
        axes[2] = "-"
    return "".join(axes)


def _unscaled_data(img: Any, path: Path) -> np.ndarray:
    """The stored values: a read-only memory map for uncompressed files, else an array read once."""
    try:
        return np.asanyarray(img.dataobj.get_unscaled())
    except Exception as exc:
        raise UnreadableFileError(
            f"{path}: the voxel data cannot be read ({exc}); the file is probably truncated. Copy or "
            "export it again."
        ) from exc


def _slabs(shape: tuple[int, ...], itemsize: int) -> list[tuple[slice, ...]]:
    """Index tuples that cut an array into slabs of about `_SLAB_BYTES` along its last axis."""
    if not shape:
        return [()]
    per_index = int(np.prod(shape[:-1])) * itemsize
    step = max(1, _SLAB_BYTES // max(per_index, 1))
    lead = (slice(None),) * (len(shape) - 1)
    return [lead + (slice(i, i + step),) for i in range(0, shape[-1], step)]


def _scaled(raw: np.ndarray, slope: float, inter: float) -> np.ndarray:
    """``raw * slope + inter`` as float32, computed slab by slab into one preallocated array."""
    out = np.empty(raw.shape, dtype=np.float32, order="F" if np.isfortran(raw) else "C")
    for index in _slabs(raw.shape, raw.itemsize):
        np.multiply(raw[index], slope, out=out[index], casting="unsafe")
        out[index] += inter
    return out


def _check_finite(data: np.ndarray, path: Path) -> None:
    """Raise when `data` holds NaN or Inf; min/max propagate both, so no mask array is made."""
    pages = PageRelease(data)  # a mapped file scanned whole would otherwise stay resident whole
    for index in _slabs(data.shape, data.itemsize):
        slab = data[index]
        pages.read(slab.nbytes)
        if slab.size and not (np.isfinite(slab.min()) and np.isfinite(slab.max())):
            raise InputError(
                f"{path}: contains NaN or infinite values. Replace them (e.g. with 0 via "
                "numpy.nan_to_num) and save the file again."
            )
    pages.release()


def _label_array(data: np.ndarray, path: Path) -> np.ndarray:
    """Labels as an unsigned integer array; integer data is returned as is (a view) when it fits."""
    lo = hi = 0
    pages = PageRelease(data)
    for index in _slabs(data.shape, data.itemsize):
        slab = data[index]
        pages.read(slab.nbytes)
        if slab.size:
            lo, hi = min(lo, slab.min()), max(hi, slab.max())
            if data.dtype.kind == "f" and not np.array_equal(slab, np.round(slab)):
                raise InputError(
                    f"{path}: holds non-integer values, so it cannot be a label map; read it with "
                    "as_label=False, or round the labels before saving."
                )
    pages.release()
    if lo < 0 or not np.isfinite(hi) or hi > np.iinfo(np.uint16).max:
        raise InputError(
            f"{path}: label values range over [{lo}, {hi}]; labels must be integers in [0, 65535]. "
            "Renumber the labels, or read the file with as_label=False."
        )
    dtype = np.uint8 if hi <= np.iinfo(np.uint8).max else np.uint16
    if data.dtype == dtype:
        return data
    return data.astype(dtype)


def _nifti_dtype(data: np.ndarray) -> np.ndarray:
    """`data` in a type NIfTI readers agree on (no bool, float16 or 64-bit integers)."""
    if data.dtype == bool:
        return data.astype(np.uint8)
    if data.dtype == np.float16:
        return data.astype(np.float32)
    if data.dtype.kind in "iu" and data.dtype.itemsize == 8:
        if data.size == 0 or (data.min() >= np.iinfo(np.int32).min and data.max() <= np.iinfo(np.int32).max):
            return data.astype(np.int32)
        return data.astype(np.float64)
    return data


def _affine_xyz_lps(image: MedImage) -> np.ndarray:
    """(4, 4) index (x, y, z) -> LPS of `image`; a 2D image lies in an axial plane at S = 0."""
    if image.ndim_spatial == 3:
        return medimage_affine_xyz_lps(image.spacing, image.origin, image.direction)
    direction = np.eye(3)
    direction[1:, 1:] = image.direction
    return medimage_affine_xyz_lps((1.0, *image.spacing), (0.0, *image.origin), direction)


def _time_spacing_ms(zoom: float, unit: str) -> tuple[float | None, str]:
    if unit not in _TIME_TO_MS:
        return None, f"time axis unit is {unit!r}, not a time; time spacing left unset"
    if not np.isfinite(zoom) or zoom <= 0:
        return None, "the file gives no time spacing"
    note = "the file gives no time unit; seconds assumed" if unit == "unknown" else ""
    if unit in ("sec", "unknown") and zoom >= _IMPLAUSIBLE_SECONDS:
        # Kept as stored; many tools write milliseconds under a "sec" unit, so say so rather than guess.
        note = f"time step {zoom:g} s is unusually long; if the file means ms, fix its xyzt_units"
    return zoom * _TIME_TO_MS[unit], note


def _synthetic_descrip(provenance: SyntheticProvenance) -> bytes:
    """`SyntheticProvenance.summary` in 80 bytes: free text, then the checkpoint give way to the seed."""
    candidates = (
        provenance,
        replace(provenance, description=""),
        replace(provenance, description="", checkpoint=""),
    )
    for candidate in candidates:
        text = _ascii(candidate.summary(), 1000)
        if len(text) <= 80:
            return text
    return text[:80]


def _text(value: np.ndarray) -> str:
    return bytes(np.asarray(value).item()).decode("latin-1").rstrip("\x00").strip()


def _ascii(text: str, size: int) -> bytes:
    return text.encode("ascii", "replace")[:size]


def _extension_bytes(image: MedImage) -> bytes:
    fields = {
        "modality": image.modality,
        "units": image.units,
        "name": image.name,
        "synthetic": asdict(image.synthetic) if image.synthetic is not None else None,
    }
    return _EXTENSION_PREFIX + json.dumps(fields).encode()


def _stored_fields(header: Any) -> dict[str, Any]:
    """What `write_nifti` kept in its header extension, or ``{}``."""
    for extension in header.extensions:
        content = extension.get_content()
        if isinstance(content, bytes) and content.startswith(_EXTENSION_PREFIX):
            try:
                fields = json.loads(content[len(_EXTENSION_PREFIX) :].rstrip(b"\x00"))
            except ValueError:
                return {}
            return fields if isinstance(fields, dict) else {}
    return {}


def _synthetic_from_header(header: Any, stored: dict[str, Any]) -> SyntheticProvenance | None:
    descrip, intent = _text(header["descrip"]), _text(header["intent_name"])
    if not (intent == SYNTHETIC_INTENT or descrip.startswith("SYNTHETIC") or stored.get("synthetic")):
        return None
    if isinstance(stored.get("synthetic"), dict):
        try:
            return SyntheticProvenance(**stored["synthetic"])
        except TypeError:
            pass
    return provenance_from_summary(descrip)


def _save_atomically(img: Any, path: Path) -> Path:
    # Streamed rather than saved by name: nibabel would pick gzip by the temporary's suffix, and a
    # temporary ending in .nii.gz is one that folder readers take for data.
    with atomic_path(path) as tmp, open(tmp, "wb") as raw:
        if path.name.lower().endswith(".gz"):
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=_GZIP_LEVEL) as stream:
                img.to_stream(stream)
        else:
            img.to_stream(raw)
    return path
