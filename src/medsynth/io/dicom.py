"""DICOM reading with pydicom: single files, multi-frame files and folders holding series.

What each kind of input becomes (docs/formats.md says more):

- a single-frame file: ``"yx"`` (``"yxc"`` for colour with ``keep_rgb``);
- a multi-frame file of a volume (Enhanced/Legacy Converted CT, MR, PET): ``"zyx"`` sorted along the
  slice normal from the per-frame functional groups (``"tzyx"`` when positions repeat);
- any other multi-frame file (ultrasound or angiography cine, ...): frames on the time axis, ``"tyx"``;
- a folder: one image per series (and per stack of equal size and orientation within a series),
  slices sorted by Image Position (Patient) along the slice normal, else by Instance Number.

Values: Rescale Slope/Intercept (or a Modality LUT) applied, CT in HU; MONOCHROME1 inverted so that
bright means dense; colour converted to grayscale (luminance: the Y of YCbCr data, BT.601 weights for
RGB) unless ``keep_rgb``. Frames and slices are decoded one at a time into one preallocated array.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medsynth.errors import InputError, InputWarning, UnreadableFileError
from medsynth.io.dicom_pixels import (
    iter_frames,
    pixel_data_length,
    require_decoder,
    set_transfer_syntax_from_encoding,
    warn_excess_pixel_data,
)
from medsynth.io.image import MedImage, SyntheticProvenance
from medsynth.io.library_logs import held_back
from medsynth.io.orientation import dicom_affine, to_medimage_layout
from medsynth.io.provenance import provenance_from_summary
from medsynth.io.recognise import is_series_file

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

LUMINANCE_WEIGHTS = np.array([0.299, 0.587, 0.114])
"""ITU-R BT.601 luma weights: the same Y that YCbCr-encoded (JPEG) DICOM stores."""

ENHANCED_VOLUME_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT
        "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT
        "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR
        "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR
        "1.2.840.10008.5.1.4.1.1.128.1",  # Legacy Converted Enhanced PET
        "1.2.840.10008.5.1.4.1.1.130",  # Enhanced PET
    }
)
"""Multi-frame objects whose frames are slices of a volume, not time."""

_SYNTHESIZING_EQUIPMENT = "109100"
_NON_IMAGE_CONTENT = {
    "RT Structure Set Storage": "whose contours outline structures on an image series but hold no image",
    "RT Plan Storage": "a treatment plan, which holds no image",
    "RT Ion Plan Storage": "an ion treatment plan, which holds no image",
}
_POSITION_DECIMALS = 3
"""Slice positions closer than 1 µm are the same position (repeated in time)."""
_UNEVEN_TOLERANCE = 0.01
"""Relative deviation of a slice gap from the median gap above which the spacing is reported uneven."""
_MIN_DIRECTION = 1e-6
"""Direction cosines shorter than this are zero."""
_MIN_SINE = 0.01
"""Row and column directions closer than about 0.6 degrees are parallel."""


def read_dicom_file(path: Path, *, keep_rgb: bool = False) -> list[MedImage]:
    """Read one DICOM file: a 2D image, a volume of frames or a cine (see the module docstring)."""
    ds = read_header(path)
    _require_image(ds, path)
    require_decoder(ds, path)
    name = str(ds.get("SeriesDescription", "")).strip() or path.stem
    if frame_count(ds, path) > 1:
        return [_read_multiframe(path, ds, keep_rgb, name=name)]
    return [_read_stack([_record(path, ds)], ds, keep_rgb, name=name)]


def read_dicom_folder(folder: Path, *, keep_rgb: bool = False) -> list[MedImage]:
    """Read every DICOM series directly inside `folder` (sub-folders are not searched).

    Raises:
        InputError: the folder holds no DICOM image.
        UnreadableFileError: a ``.dcm`` file in it is corrupt.
    """
    headers: list[tuple[Path, Dataset]] = []
    skipped: dict[str, str] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        ds = _folder_header(path)
        if ds is None:
            skipped[path.name] = "not DICOM"
        elif "Rows" not in ds or int(ds.get("BitsAllocated") or 16) == 1:
            skipped[path.name] = "DICOM without image data (truncated, or a report or segmentation)"
        else:
            headers.append((path, ds))
    if not headers:
        raise InputError(_no_images_message(folder, skipped))

    images = []
    groups = _series_groups(headers)
    _warn_split_series(groups, folder)
    for group in groups:
        for path, ds in group:
            require_decoder(ds, path)
        first_path, first = group[0]
        _require_image(first, first_path)
        name = _series_name(first, folder.name)
        if len(group) == 1 and frame_count(first, first_path) > 1:
            images.append(_read_multiframe(first_path, first, keep_rgb, name=name))
        else:
            records = [_record(p, ds) for p, ds in group]
            images.append(_read_stack(records, first, keep_rgb, name=name))
    for image in images:
        image.metadata["source"] = str(folder)
        if skipped:
            image.metadata["skipped_files"] = sorted(skipped)
    _make_names_unique(images)
    return images


def read_header(path: Path) -> Dataset:
    """The header of a DICOM file, without pixel data (whose length, when native, is in ``medsynth_pixel_data_length``).

    Raises:
        UnreadableFileError: not DICOM, or a header that cannot be parsed.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with open(path, "rb") as f, held_back("pydicom"):
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            ds.medsynth_pixel_data_length = pixel_data_length(f, ds)
        return ds
    except InvalidDicomError:
        ds = _forced_header(path)
        if ds is None:
            raise UnreadableFileError(
                f"{path}: is not a DICOM file (no DICOM preamble or header). If it is an image in another "
                "format, convert it to DICOM or NIfTI; if it should be DICOM, copy or export it again."
            ) from None
        return ds
    except Exception as exc:
        raise UnreadableFileError(
            f"{path}: the DICOM header is corrupt or truncated ({type(exc).__name__}: {exc}). Copy or export "
            "the file again."
        ) from exc


def _forced_header(path: Path) -> Dataset | None:
    """A data set written without the file meta header is DICOM too; anything without a SOP class is not."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:
        return None
    if "SOPClassUID" not in ds:
        return None
    set_transfer_syntax_from_encoding(ds)
    return ds


def _folder_header(path: Path) -> Dataset | None:
    """The header of a file in a series folder; None for other files (notes, DICOMDIR, thumbnails)."""
    if not is_series_file(path):
        return None
    try:
        return read_header(path)
    except UnreadableFileError:
        if path.suffix.lower() in (".dcm", ".dicom"):
            raise
        return None


def frame_count(ds: Dataset, path: Path) -> int:
    """Number of Frames, 1 when absent; `InputError` for a value that is not a whole number."""
    if "NumberOfFrames" not in ds:
        return 1
    # pydicom warns and logs about a malformed value as it converts it; our error says more.
    with held_back("pydicom"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = ds.get("NumberOfFrames")
    try:
        return max(1, int(value)) if value not in (None, "") else 1
    except (TypeError, ValueError):
        raise InputError(
            f"{path}: Number of Frames (0028,0008) is {str(value)!r}, not a whole number, so its frames cannot be "
            "counted. Correct the value in a copy of the file (e.g. `dcmodify -m NumberOfFrames=1`) or export "
            "it again."
        ) from None


def _require_image(ds: Dataset, path: Path) -> None:
    if "Rows" not in ds or "Columns" not in ds:
        raise UnreadableFileError(_no_image_message(ds, path))
    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        raise InputError(f"{path}: uses PALETTE COLOR, which medsynth does not read; convert it to RGB or grayscale.")
    if int(ds.get("BitsAllocated", 16)) == 1:
        raise InputError(f"{path}: holds 1-bit data (a segmentation or overlay); open the image series instead.")


@dataclass
class _ValueMap:
    """How stored values become output values: Modality LUT or rescale, MONOCHROME1 inversion."""

    slope: float = 1.0
    intercept: float = 0.0
    invert: bool = False
    stored_range: tuple[float, float] = (0.0, 255.0)
    lut: Dataset | None = None

    @property
    def output_range(self) -> tuple[float, float]:
        a, b = (self.slope * v + self.intercept for v in self.stored_range)
        return min(a, b), max(a, b)

    @property
    def is_identity(self) -> bool:
        return self.slope == 1 and self.intercept == 0 and not self.invert and self.lut is None

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """(H, W) stored values -> output values (float64 unless nothing changes)."""
        if self.lut is not None:
            from pydicom.pixels import apply_modality_lut

            values = apply_modality_lut(frame, self.lut)
        elif self.slope == 1 and self.intercept == 0:
            values = frame
        else:
            values = frame * self.slope + self.intercept
        if self.invert:
            lo, hi = self.output_range
            values = (lo + hi) - values.astype(np.float64)
        return values


@dataclass
class _Record:
    """One slice or frame of a stack: where its pixels are and where it lies."""

    source: Path
    frame: int | None
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    values: _ValueMap
    order_key: tuple[float, ...]
    """Acquisition order among slices at the same position: temporal index, trigger time, instance."""
    unusable_orientation: str = ""
    """Image Orientation (Patient) as stored when it was present but unusable (zero or parallel vectors)."""
    pixel_data_length: int | None = None
    """Bytes of native pixel data in the file, when known from its header read."""


def _number(value: Any, default: float) -> float:
    try:
        out = float(value[0] if isinstance(value, Sequence) and not isinstance(value, str) else value)
    except (TypeError, ValueError, IndexError):
        return default
    return out if np.isfinite(out) else default


def _vector(value: Any, size: int) -> np.ndarray | None:
    try:
        out = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (size,) and np.all(np.isfinite(out)) else None


def _orientation(value: Any) -> tuple[np.ndarray | None, str]:
    """Image Orientation (Patient) when usable, and the stored value when it is present but unusable.

    Zero or (nearly) parallel row and column directions span no plane: nibabel and ITK fall back to
    the identity orientation, and so do we, saying so (`_warn_unusable_orientation`).
    """
    if value is None or value == "":
        return None, ""
    vector = _vector(value, 6)
    if vector is not None:
        row, column = vector[:3], vector[3:]
        lengths = np.linalg.norm(row), np.linalg.norm(column)
        if min(lengths) > _MIN_DIRECTION and np.linalg.norm(np.cross(row, column)) > _MIN_SINE * lengths[0] * lengths[1]:
            return vector, ""
    return None, str(value)


def _warn_unusable_orientation(records: Sequence[_Record], where: Path) -> None:
    bad = [r for r in records if r.unusable_orientation]
    if bad:
        files = sorted({r.source.name for r in bad})
        warnings.warn(
            f"{where}: Image Orientation (Patient) {bad[0].unusable_orientation!r} (in {len(files)} file(s), e.g. "
            f"{files[0]}) has a zero or parallel row and column direction, so it spans no plane; the identity "
            "(axial) orientation is assumed and slices keep their file order. Correct the header or export the "
            "series again.",
            InputWarning,
            stacklevel=3,
        )


def _spacing_pair(value: Any) -> tuple[float, float] | None:
    vec = _vector(value, 2) if value is not None else None
    return (float(vec[0]), float(vec[1])) if vec is not None and np.all(vec > 0) else None


def _value_map(ds: Dataset, item: Dataset | None = None) -> _ValueMap:
    """The value map of `ds`; `item` is a Pixel Value Transformation item of an enhanced frame."""
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    stored = (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1) if signed else (0.0, 2.0**bits - 1)
    source = item if item is not None else ds
    lut = ds if ds.get("ModalityLUTSequence") else None
    return _ValueMap(
        slope=_number(source.get("RescaleSlope"), 1.0) or 1.0,
        intercept=_number(source.get("RescaleIntercept"), 0.0),
        invert=ds.get("PhotometricInterpretation") == "MONOCHROME1",
        stored_range=stored,
        lut=lut,
    )


def _output_dtype(maps: Sequence[_ValueMap], colour: bool, raw: np.dtype) -> np.dtype:
    """The smallest type that holds every output value exactly; float32 for non-integer rescales."""
    if colour or all(m.is_identity for m in maps):
        return np.dtype(raw)
    if any(m.lut is not None for m in maps):
        return np.dtype(np.float32)
    integral = all(float(m.slope).is_integer() and float(m.intercept).is_integer() for m in maps)
    if not integral:
        return np.dtype(np.float32)
    lo = min(m.output_range[0] for m in maps)
    hi = max(m.output_range[1] for m in maps)
    for dtype in (np.uint8, np.int16, np.uint16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.float32)


def _fill(out: np.ndarray, frame: np.ndarray, values: _ValueMap, photometric: str, keep_rgb: bool) -> None:
    """Write one decoded frame into its preallocated slot `out`."""
    if frame.ndim == 3 and not keep_rgb:
        if photometric.startswith("YBR"):
            out[...] = frame[..., 0]
        else:
            out[...] = np.rint(frame @ LUMINANCE_WEIGHTS)
    elif frame.ndim == 3:
        out[...] = frame
    else:
        out[...] = values.apply(frame)


def _colour_plan(ds: Dataset, keep_rgb: bool) -> tuple[bool, bool]:
    """(is colour, ask pydicom for RGB): YCbCr data stays YCbCr when only its Y (luma) is needed."""
    colour = int(ds.get("SamplesPerPixel") or 1) > 1
    return colour, keep_rgb or not str(ds.get("PhotometricInterpretation", "")).startswith("YBR")


def _raw_dtype(ds: Dataset) -> np.dtype:
    bits = int(ds.get("BitsAllocated") or 16)
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    if bits <= 8:
        return np.dtype(np.int8 if signed else np.uint8)
    if bits <= 16:
        return np.dtype(np.int16 if signed else np.uint16)
    return np.dtype(np.int32 if signed else np.uint32)


def _frame_group(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The `sequence` item of an enhanced file's frame: per-frame functional group first, then shared."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and frame < len(per_frame) and per_frame[frame].get(sequence):
        return per_frame[frame].get(sequence)[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and shared[0].get(sequence):
        return shared[0].get(sequence)[0]
    return None


def _record(path: Path, ds: Dataset) -> _Record:
    orientation, unusable = _orientation(ds.get("ImageOrientationPatient"))
    return _Record(
        source=path,
        frame=None,
        position=_vector(ds.get("ImagePositionPatient"), 3),
        orientation=orientation,
        unusable_orientation=unusable,
        pixel_data_length=getattr(ds, "medsynth_pixel_data_length", None),
        pixel_spacing=_spacing_pair(ds.get("PixelSpacing")),
        values=_value_map(ds),
        order_key=(
            _number(ds.get("TemporalPositionIdentifier"), 0.0),
            _number(ds.get("TriggerTime"), 0.0),
            _number(ds.get("AcquisitionNumber"), 0.0),
            _number(ds.get("InstanceNumber"), 0.0),
        ),
    )


def _frame_records(path: Path, ds: Dataset, count: int) -> list[_Record]:
    """One record per frame of an enhanced (functional-group) multi-frame file."""
    records = []
    for i in range(count):
        plane = _frame_group(ds, i, "PlanePositionSequence")
        orient = _frame_group(ds, i, "PlaneOrientationSequence")
        orientation, unusable = _orientation((orient or ds).get("ImageOrientationPatient"))
        measures = _frame_group(ds, i, "PixelMeasuresSequence")
        transform = _frame_group(ds, i, "PixelValueTransformationSequence")
        content = _frame_group(ds, i, "FrameContentSequence")
        records.append(
            _Record(
                source=path,
                frame=i,
                position=_vector(plane.get("ImagePositionPatient"), 3) if plane else None,
                orientation=orientation,
                unusable_orientation=unusable,
                pixel_spacing=_spacing_pair(measures.get("PixelSpacing")) if measures else None,
                values=_value_map(ds, transform),
                order_key=(_number(content.get("TemporalPositionIndex"), 0.0) if content else 0.0, float(i)),
            )
        )
    return records


@dataclass
class _StackOrder:
    grid: list[list[int]]
    """Record indices as [time][slice], slices along the normal."""
    slice_spacing: float
    notes: list[str]


def _stack_order(records: Sequence[_Record], fallback_spacing: float, where: Path) -> _StackOrder:
    """Sort records along the slice normal (repeated positions -> time), else keep acquisition order."""
    first = records[0]
    have_geometry = first.orientation is not None and all(r.position is not None for r in records)
    if not have_geometry:
        order = sorted(range(len(records)), key=lambda i: records[i].order_key)
        note = [] if len(records) == 1 else ["no slice positions: slices in acquisition order, spacing assumed"]
        return _StackOrder([order], fallback_spacing, note)
    normal = np.cross(first.orientation[:3], first.orientation[3:])
    depth = [round(float(r.position @ normal), _POSITION_DECIMALS) for r in records]
    by_position: dict[float, list[int]] = defaultdict(list)
    for i in sorted(range(len(records)), key=lambda i: records[i].order_key):
        by_position[depth[i]].append(i)
    positions = sorted(by_position)
    counts = {len(v) for v in by_position.values()}
    if len(counts) != 1:
        raise InputError(
            f"{where}: slices repeat unevenly along the slice normal ({len(records)} slices at {len(positions)} "
            "positions), so they do not form one volume or one time series. Export each stack or time "
            "point as its own series."
        )
    grid = [[by_position[p][t] for p in positions] for t in range(counts.pop())]
    notes: list[str] = []
    if len(positions) < 2:
        return _StackOrder(grid, fallback_spacing, notes)
    gaps = np.diff(positions)
    spacing = float(np.median(gaps))
    if np.max(np.abs(gaps - spacing)) > _UNEVEN_TOLERANCE * spacing:
        notes.append(
            f"uneven slice spacing: gaps from {gaps.min():.4g} to {gaps.max():.4g} mm, median {spacing:.4g} mm used"
        )
    return _StackOrder(grid, spacing, notes)


def _pixel_spacing(ds: Dataset, record: _Record) -> tuple[tuple[float, float], str]:
    """(row spacing, column spacing) in mm and a note when it had to be guessed."""
    if record.pixel_spacing:
        return record.pixel_spacing, ""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        pair = _spacing_pair(ds.get(keyword))
        if pair:
            return pair, "" if keyword == "PixelSpacing" else f"pixel spacing from {keyword}"
    for region in ds.get("SequenceOfUltrasoundRegions") or []:
        # Physical units code 3 is centimetres.
        if region.get("PhysicalUnitsXDirection") == 3 and region.get("PhysicalUnitsYDirection") == 3:
            pair = _spacing_pair([region.get("PhysicalDeltaY"), region.get("PhysicalDeltaX")])
            if pair:
                return (pair[0] * 10, pair[1] * 10), "pixel spacing from the ultrasound region"
    return (1.0, 1.0), "no pixel spacing in the file: 1 mm assumed"


def _slice_fallback(ds: Dataset) -> float:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = _number(ds.get(keyword), 0.0)
        if value > 0:
            return value
    measures = _frame_group(ds, 0, "PixelMeasuresSequence")
    if measures is not None:
        for keyword in ("SpacingBetweenSlices", "SliceThickness"):
            value = _number(measures.get(keyword), 0.0)
            if value > 0:
                return value
    return 1.0


def _read_stack(records: list[_Record], ds: Dataset, keep_rgb: bool, *, name: str) -> MedImage:
    """Single-frame files (one slice each) -> ``yx`` / ``zyx`` / ``tzyx``, filled slice by slice."""
    where = records[0].source if len(records) == 1 else records[0].source.parent
    _warn_unusable_orientation(records, where)
    order = _stack_order(records, _slice_fallback(ds), where)
    colour, as_rgb = _colour_plan(ds, keep_rgb)
    rows, cols = int(ds.Rows), int(ds.Columns)
    n_time, n_slices = len(order.grid), len(order.grid[0])
    dtype = _output_dtype([r.values for r in records], colour, _raw_dtype(ds))
    shape = (n_time, n_slices, rows, cols) + ((3,) if colour and keep_rgb else ())
    out = np.empty(shape, dtype=dtype)
    photometric = str(ds.get("PhotometricInterpretation", ""))
    for t, row in enumerate(order.grid):
        for z, index in enumerate(row):
            record = records[index]
            warn_excess_pixel_data(record.source, ds, 1, record.pixel_data_length)
            frame = next(iter_frames(record.source, as_rgb=as_rgb, count=1))
            if frame.shape[:2] != (rows, cols):
                raise InputError(
                    f"{record.source}: is {frame.shape[0]}x{frame.shape[1]} but its series is {rows}x{cols}; "
                    "move it out of the folder."
                )
            _fill(out[t, z], frame, record.values, photometric, keep_rgb)
    axes = "tzyx" if n_time > 1 else "zyx"
    array = out if n_time > 1 else out[0]
    if n_slices == 1:
        array, axes = array[:, 0] if n_time > 1 else array[0], axes.replace("z", "")
    if colour and keep_rgb:
        axes += "c"
    first = records[order.grid[0][0]]
    return _image(array, axes, ds, first, order, name, time_spacing=_series_time_spacing(records, order))


def _series_time_spacing(records: Sequence[_Record], order: _StackOrder) -> float | None:
    """Median Trigger Time step (ms) of a time series of volumes, when the files give one."""
    if len(order.grid) < 2:
        return None
    times = [records[row[0]].order_key[1] for row in order.grid]
    steps = np.diff(times)
    return float(np.median(steps)) if np.all(steps > 0) else None


def _read_multiframe(path: Path, ds: Dataset, keep_rgb: bool, *, name: str) -> MedImage:
    """A multi-frame file: a volume when its frames have positions (enhanced objects), else a cine."""
    count = frame_count(ds, path)
    volume = str(ds.get("SOPClassUID", "")) in ENHANCED_VOLUME_SOP_CLASSES or (
        _frame_group(ds, 0, "PlanePositionSequence") is not None
    )
    records = _frame_records(path, ds, count) if volume else [_record(path, ds)] * count
    _warn_unusable_orientation(records, path)
    colour, as_rgb = _colour_plan(ds, keep_rgb)
    rows, cols = int(ds.Rows), int(ds.Columns)
    if volume:
        order = _stack_order(records, _slice_fallback(ds), path)
    else:
        order = _StackOrder([list(range(count))], 1.0, [])
    n_outer, n_inner = len(order.grid), len(order.grid[0])
    dtype = _output_dtype([r.values for r in records], colour, _raw_dtype(ds))
    out = np.empty((n_outer * n_inner, rows, cols) + ((3,) if colour and keep_rgb else ()), dtype=dtype)
    slot = {index: t * n_inner + z for t, row in enumerate(order.grid) for z, index in enumerate(row)}
    photometric = str(ds.get("PhotometricInterpretation", ""))
    warn_excess_pixel_data(path, ds, count, getattr(ds, "medsynth_pixel_data_length", None))
    for i, frame in enumerate(iter_frames(path, as_rgb=as_rgb, count=count)):
        _fill(out[slot[i]], frame, records[i].values, photometric, keep_rgb)
    first = records[order.grid[0][0]]
    if volume:
        out = out.reshape((n_outer, n_inner) + out.shape[1:]) if n_outer > 1 else out
        axes = "tzyx" if n_outer > 1 else "zyx"
        time_spacing = None
    else:
        axes, time_spacing = "tyx", _frame_time(ds)
    axes += "c" if colour and keep_rgb else ""
    return _image(out, axes, ds, first, order, name, time_spacing=time_spacing)


def _frame_time(ds: Dataset) -> float | None:
    """Time between frames in ms: Frame Time, else the median of Frame Time Vector, else Cine Rate."""
    frame_time = _number(ds.get("FrameTime"), 0.0)
    if frame_time > 0:
        return frame_time
    vector = ds.get("FrameTimeVector")
    if vector is not None and len(vector) > 1:
        steps = np.asarray([float(v) for v in vector[1:]])
        if np.all(steps > 0):
            return float(np.median(steps))
    rate = _number(ds.get("CineRate") or ds.get("RecommendedDisplayFrameRate"), 0.0)
    return 1000.0 / rate if rate > 0 else None


def _image(
    array: np.ndarray,
    axes: str,
    ds: Dataset,
    first: _Record,
    order: _StackOrder,
    name: str,
    *,
    time_spacing: float | None,
) -> MedImage:
    pixel_spacing, spacing_note = _pixel_spacing(ds, first)
    affine = dicom_affine(first.orientation, pixel_spacing, first.position, order.slice_spacing)
    layout = to_medimage_layout(array, axes, affine)
    metadata = _metadata(ds, first)
    notes = order.notes + ([spacing_note] if spacing_note else [])
    if first.values.invert:
        notes.append("MONOCHROME1 inverted so that bright means dense")
        metadata["monochrome1_inverted"] = True
        _invert_window(metadata, first.values)
    if notes:
        metadata["notes"] = notes
    if layout.geometry.plane:
        metadata["plane"] = layout.geometry.plane
    return MedImage(
        array=layout.array,
        axes=layout.axes,
        spacing=layout.geometry.spacing,
        origin=layout.geometry.origin,
        direction=layout.geometry.direction,
        time_spacing=time_spacing,
        modality=str(ds.get("Modality") or "OT"),
        units=_units(ds, first.values),
        name=name,
        synthetic=_synthetic(ds),
        metadata=metadata,
    )


def _units(ds: Dataset, values: _ValueMap) -> str:
    modality = str(ds.get("Modality") or "")
    if modality == "PT" and ds.get("Units"):
        return str(ds.Units)
    rescale_type = str(ds.get("RescaleType") or "")
    if modality == "CT" and rescale_type in ("", "HU"):
        return "HU"
    return rescale_type if rescale_type not in ("", "US") else ""


def _window(ds: Dataset) -> tuple[float, float] | None:
    source = ds if "WindowCenter" in ds else _frame_group(ds, 0, "FrameVOILUTSequence")
    if source is None or "WindowCenter" not in source or "WindowWidth" not in source:
        return None
    return _number(source.WindowCenter, 0.0), _number(source.WindowWidth, 0.0)


def _invert_window(metadata: dict[str, Any], values: _ValueMap) -> None:
    if "window_center" in metadata:
        lo, hi = values.output_range
        metadata["window_center"] = (lo + hi) - metadata["window_center"]


def _metadata(ds: Dataset, first: _Record) -> dict[str, Any]:
    meta = getattr(ds, "file_meta", None)
    metadata: dict[str, Any] = {
        "source": str(first.source),
        "format": "DICOM",
        "series_description": str(ds.get("SeriesDescription", "")),
        "series_uid": str(ds.get("SeriesInstanceUID", "")),
        "study_uid": str(ds.get("StudyInstanceUID", "")),
        "frame_of_reference_uid": str(ds.get("FrameOfReferenceUID", "")),
        "sop_class_uid": str(ds.get("SOPClassUID", "")),
        "transfer_syntax_uid": str(meta.get("TransferSyntaxUID", "")) if meta is not None else "",
        "patient_id": str(ds.get("PatientID", "")),
        "patient_name": str(ds.get("PatientName", "")),
        "photometric_interpretation": str(ds.get("PhotometricInterpretation", "")),
    }
    if first.position is not None:
        metadata["image_position_patient"] = first.position.tolist()
    if first.orientation is not None:
        metadata["image_orientation_patient"] = first.orientation.tolist()
    window = _window(ds)
    if window is not None:
        metadata["window_center"], metadata["window_width"] = window
    return metadata


def _synthetic(ds: Dataset) -> SyntheticProvenance | None:
    """The provenance of a file marked Synthetic Data = YES, from its Contributing Equipment item."""
    if str(ds.get("SyntheticData", "")).upper() != "YES":
        return None
    model, version, text = "", "", str(ds.get("DerivationDescription", ""))
    for item in ds.get("ContributingEquipmentSequence") or []:
        purpose = item.get("PurposeOfReferenceCodeSequence") or []
        if purpose and purpose[0].get("CodeValue") == _SYNTHESIZING_EQUIPMENT:
            model = str(item.get("ManufacturerModelName", ""))
            versions = item.get("SoftwareVersions", "")
            version = str(versions[0] if isinstance(versions, Sequence) and not isinstance(versions, str) else versions)
            text = text or str(item.get("ContributionDescription", ""))
    return provenance_from_summary(text, model=model, model_version=version)


def _series_name(ds: Dataset, fallback: str) -> str:
    description = str(ds.get("SeriesDescription", "")).strip()
    if description:
        return description
    number = ds.get("SeriesNumber")
    return f"{fallback} series {number}" if number not in (None, "") else fallback


def _series_groups(headers: list[tuple[Path, Dataset]]) -> list[list[tuple[Path, Dataset]]]:
    """Files grouped by series, then by stack (size, orientation, colour); multi-frame files alone."""
    groups: dict[tuple[Any, ...], list[tuple[Path, Dataset]]] = defaultdict(list)
    for path, ds in headers:
        orientation = _vector(ds.get("ImageOrientationPatient"), 6)
        stack: tuple[Any, ...] = (
            int(ds.Rows),
            int(ds.Columns),
            int(ds.get("SamplesPerPixel") or 1),
            tuple(np.round(orientation, 3)) if orientation is not None else None,
        )
        if frame_count(ds, path) > 1:
            stack = (str(path),)
        groups[(str(ds.get("SeriesInstanceUID", "")), *stack)].append((path, ds))

    def series_key(group: list[tuple[Path, Dataset]]) -> tuple[float, str]:
        ds = group[0][1]
        return _number(ds.get("SeriesNumber"), 0.0), str(group[0][0])

    return sorted(groups.values(), key=series_key)


def _make_names_unique(images: list[MedImage]) -> None:
    seen: dict[str, int] = defaultdict(int)
    for image in images:
        seen[image.name] += 1
        if seen[image.name] > 1:
            image.name = f"{image.name} ({seen[image.name]})"


def _no_image_message(ds: Dataset, path: Path) -> str:
    """What a DICOM file without Rows/Columns is, and what to open instead."""
    from pydicom.uid import UID

    meta = getattr(ds, "file_meta", None)
    uid = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
    kind = UID(str(uid)).name if uid else ""
    no_meta = "" if meta is not None and "MediaStorageSOPClassUID" in meta else " (written without the file meta header)"
    if not kind:
        return (
            f"{path}: is DICOM{no_meta} but holds no image (no Rows/Columns, no SOP class): the file is truncated or "
            "a non-image object. Open an image file instead."
        )
    if kind == "Media Storage Directory Storage":
        return f"{path}: is a DICOMDIR, the index of a DICOM disc, not an image. Open a folder holding a series' files."
    if kind.endswith("Image Storage"):
        return (
            f"{path}: holds no image (no Rows/Columns) although its SOP class is {kind}: it is truncated or "
            "damaged. Copy or export it again."
        )
    what = _NON_IMAGE_CONTENT.get(kind, "which holds no image")
    return f"{path}: is a DICOM {kind} object{no_meta}, {what}. Open the image series it belongs to instead."


def _warn_split_series(groups: list[list[tuple[Path, Dataset]]], folder: Path) -> None:
    """Warn when slices of another size split a series into several images (and leave a gap in it)."""
    by_series: dict[str, list[list[tuple[Path, Dataset]]]] = defaultdict(list)
    for group in groups:
        by_series[str(group[0][1].get("SeriesInstanceUID", ""))].append(group)
    for uid, parts in by_series.items():
        sizes = {(int(group[0][1].Rows), int(group[0][1].Columns)) for group in parts}
        if len(sizes) < 2:
            continue
        main = max(parts, key=len)
        odd = sorted(path.name for group in parts if group is not main for path, _ in group)
        rows, cols = int(main[0][1].Rows), int(main[0][1].Columns)
        warnings.warn(
            f"{folder}: series {uid or '(no Series Instance UID)'} has {len(odd)} file(s) of another size than its "
            f"{len(main)} slices of {rows}x{cols}: {', '.join(odd[:5])}{' ...' if len(odd) > 5 else ''}. They are read "
            "as separate images, and the series has a gap where they were. Move them out of the folder if they do "
            "not belong to the series.",
            InputWarning,
            stacklevel=3,
        )


def _no_images_message(folder: Path, skipped: dict[str, str]) -> str:
    subfolders = sorted(p.name for p in folder.iterdir() if p.is_dir())
    found = ", ".join(f"{name} ({why})" for name, why in list(skipped.items())[:5])
    nifti = [name for name in skipped if name.lower().endswith((".nii", ".nii.gz"))]
    hints = []
    if nifti:
        hints.append(f"it holds NIfTI files ({', '.join(nifti[:3])}): open those files directly")
    if subfolders:
        hints.append(f"sub-folders are not searched: open one of {', '.join(subfolders[:5])}")
    hint = "; ".join(hints) or "point at a folder that holds the DICOM image files of a series"
    return f"{folder}: holds no DICOM images{f' (found: {found})' if found else ' (it is empty)'}. Fix: {hint}."
