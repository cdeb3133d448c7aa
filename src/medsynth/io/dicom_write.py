"""Writing a `MedImage` as DICOM, marking synthetic images by the standard's own attributes.

Which object for which data (docs/synthetic-dicom.md says more):

- ``zyx`` CT or MR: one CT/MR Image Storage file per slice, with Frame of Reference, position,
  orientation and spacing; with ``enhanced=True`` one Legacy Converted Enhanced CT/MR multi-frame file
  made by highdicom from those slices.
- ``tzyx`` CT or MR: one such series per time point (Temporal Position Identifier = time index + 1),
  all in one study and one Frame of Reference.
- ``yx`` / ``yxc``: Secondary Capture Image Storage (grayscale with rescale, or RGB).
- ``tyx`` / ``tyxc``: one Multi-frame Grayscale Word / True Color Secondary Capture file, frames in
  time order with Frame Time.

A synthetic image (`provenance` given or ``image.synthetic`` set) always gets Synthetic Data = YES, a
Contributing Equipment item whose purpose is (109100, DCM, "Synthesizing Equipment"), ImageType
DERIVED\\SECONDARY and a Derivation Description from `SyntheticProvenance.summary`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.tag import Tag
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    PYDICOM_IMPLEMENTATION_UID,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

import medsynth
from medsynth.atomic import atomic_path, staged_folder
from medsynth.errors import InputError, UnreadableFileError
from medsynth.io.image import MedImage, SyntheticProvenance
from medsynth.io.orientation import medimage_affine_xyz_lps

VOLUME_MODALITIES = ("CT", "MR")

# Patient and study attributes taken from a reference so the synthetic series files under the same
# patient and study; nothing else of the reference (its acquisition, its equipment) describes our image.
REFERENCE_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)

ANONYMOUS_PATIENT_ID = {True: "SYNTHETIC", False: "ANONYMOUS"}
"""Patient ID when no reference is given, by whether the image is synthetic: a neutral label, never an identity."""

_UINT16_STEPS = 65000
"""Steps used for non-integer data; below 65535 so that the decimal rounding of the slope cannot overflow."""


def write_dicom(
    image: MedImage,
    out_dir: str | Path,
    *,
    provenance: SyntheticProvenance | None = None,
    reference: str | Path | Dataset | None = None,
    enhanced: bool = False,
) -> list[Path]:
    """Write `image` as DICOM files into `out_dir` (created if missing) and return their paths.

    `image.array` is ``(Z, Y, X)``, ``(T, Z, Y, X)``, ``(Y, X)``, ``(T, Y, X)``, ``(Y, X, C)`` or
    ``(T, Y, X, C)`` in the image's units (CT in HU). `provenance` defaults to ``image.synthetic``;
    when both are None the image is written as a derived but not synthetic image. Patient and study
    identity come from `reference` (a DICOM file or dataset, never modified) or stay anonymous.
    Existing files are never overwritten: a name clash raises `InputError`.
    """
    provenance = provenance or image.synthetic
    _check_image(image, enhanced)
    ref = _load_reference(reference)
    now = datetime.now()
    base = _base_dataset(image, provenance, ref, now)
    if image.ndim_spatial == 3:
        named = _volume_datasets(image, base, enhanced)
    else:
        named = _secondary_capture_datasets(image, base)
    out = Path(out_dir)
    stem = _file_stem(image, provenance is not None)
    paths = [out / f"{stem}{suffix}.dcm" for suffix, _ in named]
    _check_targets(out, paths)
    # All files appear together or none: a clash found late, or a crash, leaves no partial series.
    with staged_folder(out) as stage:
        for path, (_, ds) in zip(paths, named):
            ds.save_as(stage / path.name, enforce_file_format=True)
    return paths


def save_atomic(ds: Dataset, path: Path) -> None:
    """Write `ds` to `path` atomically (see `medsynth.atomic`)."""
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


class Rescale(NamedTuple):
    """How values become 16-bit stored pixels: ``value = stored * slope + intercept``."""

    slope: float
    intercept: float
    dtype: type
    """``np.int16`` or ``np.uint16``; the same for every file of one write."""


def rescale_for(values: np.ndarray, *, signed: bool) -> Rescale:
    """The `Rescale` that lets 16-bit stored pixels hold `values` (any shape).

    Integer-valued data spanning at most 65536 values is kept exactly (slope 1; int16 when `signed`
    storage is allowed and the values fit it, else uint16 with the minimum as intercept); anything
    else is mapped linearly onto uint16, an error of at most (max - min) / 130000. Slope and intercept
    are what DICOM's decimal strings hold, so readers get back exactly what `to_stored` used.
    """
    lo, hi = float(values.min()), float(values.max())
    if hi - lo <= 65535 and _is_integer_valued(values):
        if signed and -32768 <= lo and hi <= 32767:
            return Rescale(1.0, 0.0, np.int16)
        return Rescale(1.0, 0.0 if lo >= 0 and hi <= 65535 else lo, np.uint16)
    slope = float(format_number_as_ds((hi - lo) / _UINT16_STEPS)) if hi > lo else 1.0
    return Rescale(slope, float(format_number_as_ds(lo)), np.uint16)


def to_stored(values: np.ndarray, rescale: Rescale) -> np.ndarray:
    """Stored pixels (same shape as `values`) whose rescale gives back `values`."""
    stored = np.rint((values.astype(np.float64) - rescale.intercept) / rescale.slope)
    limits = np.iinfo(rescale.dtype)
    return np.clip(stored, limits.min, limits.max).astype(rescale.dtype)


def _is_integer_valued(values: np.ndarray) -> bool:
    if np.issubdtype(values.dtype, np.integer):
        return True
    # Plane by plane, so a large volume is never copied whole.
    return all(np.array_equal(plane, np.rint(plane)) for plane in values.reshape(-1, *values.shape[-2:]))


def _check_image(image: MedImage, enhanced: bool) -> None:
    if image.is_label:
        raise InputError(
            f"image {image.name!r} is a label map; write it with medsynth.io.write_dicom_seg "
            "(DICOM Segmentation aligned to the written images) or write_nifti"
        )
    if image.ndim_spatial == 3 and image.is_rgb:
        raise InputError(
            f"image {image.name!r} is a colour volume ({image.axes!r}); DICOM CT/MR volumes are grayscale: "
            "convert it to grayscale or write it with write_nifti"
        )
    if image.ndim_spatial == 3 and image.modality not in VOLUME_MODALITIES:
        raise InputError(
            f"image {image.name!r} is a volume of modality {image.modality!r}; write_dicom writes volumes as "
            f"CT or MR image objects: set its modality to one of {VOLUME_MODALITIES} or write it with write_nifti"
        )
    if image.is_rgb and image.array.shape[-1] not in (3, 4):
        raise InputError(
            f"image {image.name!r} has {image.array.shape[-1]} colour channels; DICOM colour images are RGB: "
            "give 3 (RGB) or 4 (RGBA, alpha is dropped) channels"
        )
    if enhanced and image.ndim_spatial != 3:
        raise InputError(
            f"enhanced=True applies to CT/MR volumes, but image {image.name!r} has axes {image.axes!r}; "
            "leave enhanced off for 2D images"
        )
    if image.array.size == 0:
        raise InputError(f"image {image.name!r} is empty (shape {image.array.shape}); nothing to write")
    if not np.issubdtype(image.array.dtype, np.number) or np.issubdtype(image.array.dtype, np.complexfloating):
        raise InputError(f"image {image.name!r} has dtype {image.array.dtype}; write real-valued numbers")
    if np.issubdtype(image.array.dtype, np.floating) and not np.isfinite(image.array).all():
        raise InputError(
            f"image {image.name!r} holds NaN or infinite values, which DICOM pixels cannot store; "
            "replace them (e.g. numpy.nan_to_num) before writing"
        )


def _load_reference(reference: str | Path | Dataset | None) -> Dataset | None:
    if reference is None or isinstance(reference, Dataset):
        return reference
    path = Path(reference)
    if not path.is_file():
        raise UnreadableFileError(f"reference {path} is not a file; give one DICOM file of the patient's study")
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError) as exc:
        raise UnreadableFileError(
            f"reference {path} cannot be read as DICOM ({exc}); give a DICOM file of the patient's study"
        ) from exc


def _base_dataset(
    image: MedImage, provenance: SyntheticProvenance | None, ref: Dataset | None, now: datetime
) -> Dataset:
    """Attributes every written file shares: patient, study, equipment, synthesis marks."""
    synthetic = provenance is not None
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    _copy_identity(ds, ref, synthetic, now)
    ds.Modality = image.modality or "OT"
    ds.SeriesDate = ds.ContentDate = ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.SeriesTime = ds.ContentTime = ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.Manufacturer = "medsynth"
    ds.ManufacturerModelName = _lo(provenance.model if synthetic else "medsynth")
    ds.SoftwareVersions = _lo(provenance.model_version if synthetic else medsynth.__version__)
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.BurnedInAnnotation = "NO"
    ds.Laterality = ""
    if synthetic:
        ds.SyntheticData = "YES"
        ds.DerivationDescription = provenance.summary()[:1024]
        ds.ContributingEquipmentSequence = [synthesizing_equipment(provenance, now)]
    return ds


def synthesizing_equipment(provenance: SyntheticProvenance, when: datetime) -> hd.ContributingEquipment:
    """The Contributing Equipment item that names medsynth's model as the synthesizer of an instance.

    Its purpose is (109100, DCM, "Synthesizing Equipment") from CID 7005 "Contributing Equipment
    Purposes of Reference".
    """
    return hd.ContributingEquipment(
        manufacturer="medsynth",
        purpose_of_reference=codes.DCM.SynthesizingEquipment,
        manufacturer_model_name=_lo(provenance.model),
        software_versions=_lo(provenance.model_version),
        contribution_datetime=when,
        contribution_description=provenance.summary()[:1024],
    )


def _copy_identity(ds: Dataset, ref: Dataset | None, synthetic: bool, now: datetime) -> None:
    if ref is not None:
        for keyword in REFERENCE_KEYWORDS:
            if keyword in ref:
                setattr(ds, keyword, copy.deepcopy(ref[keyword].value))
    ds.setdefault("PatientName", "")
    ds.setdefault("PatientID", ANONYMOUS_PATIENT_ID[synthetic])
    ds.setdefault("PatientBirthDate", "")
    ds.setdefault("PatientSex", "")
    ds.setdefault("StudyInstanceUID", generate_uid())
    # The creation date stands in for the study date of a study made up of written images only.
    ds.setdefault("StudyDate", now.strftime("%Y%m%d"))
    ds.setdefault("StudyTime", now.strftime("%H%M%S"))
    ds.setdefault("StudyID", "SYNTHETIC" if synthetic else "DERIVED")
    ds.setdefault("AccessionNumber", "")
    ds.setdefault("ReferringPhysicianName", "")


def _volume_datasets(image: MedImage, base: Dataset, enhanced: bool) -> list[tuple[str, Dataset]]:
    """One CT/MR series per time point; `enhanced` turns each series into one multi-frame file."""
    values = np.asarray(image.array)
    volumes = values if image.has_time else values[np.newaxis]
    rescale = rescale_for(values, signed=image.modality == "CT")
    base = copy.deepcopy(base)
    base.FrameOfReferenceUID = generate_uid()
    base.PositionReferenceIndicator = ""
    base.PatientPosition = ""
    lo, hi = float(values.min()), float(values.max())
    base.WindowCenter = _ds((lo + hi) / 2)
    base.WindowWidth = _ds(max(hi - lo, 1.0))
    named: list[tuple[str, Dataset]] = []
    for t, volume in enumerate(volumes):
        series = _series_attributes(image, base, t if image.has_time else None)
        series.AcquisitionNumber = t + 1
        if image.has_time:
            series.TemporalPositionIdentifier = t + 1
            series.NumberOfTemporalPositions = len(volumes)
        slices = [
            _volume_slice(image, series, to_stored(volume[z], rescale), z, rescale) for z in range(volume.shape[0])
        ]
        prefix = f"_t{t:03d}" if image.has_time else ""
        if enhanced:
            named.append((prefix, _enhanced(image, slices)))
        else:
            named.extend((f"{prefix}_{z:04d}", ds) for z, ds in enumerate(slices))
    return named


def _series_attributes(image: MedImage, base: Dataset, time_point: int | None = None) -> Dataset:
    """A new series; `time_point` names the one time point it holds when a 4D image is split into series."""
    ds = copy.deepcopy(base)
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1 if time_point is None else time_point + 1
    description = f"SYNTHETIC {image.name}" if "SyntheticData" in base else image.name
    ds.SeriesDescription = _lo(description if time_point is None else f"{description} t={time_point}")
    return ds


def _volume_slice(image: MedImage, series: Dataset, pixels: np.ndarray, z: int, rescale: Rescale) -> Dataset:
    """One CT/MR Image Storage slice: `pixels` is ``(Y, X)`` stored values."""
    ds = copy.deepcopy(series)
    ds.SOPClassUID = CTImageStorage if image.modality == "CT" else MRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = z + 1
    ds.ImageType = [*series.ImageType, "AXIAL" if image.modality == "CT" else "OTHER"]
    position, along_row, along_column = slice_geometry(image, z)
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.ImageOrientationPatient = [_ds(v) for v in (*along_row, *along_column)]
    ds.PixelSpacing = [_ds(image.spacing[1]), _ds(image.spacing[2])]
    ds.SliceThickness = _ds(image.spacing[0])
    ds.SpacingBetweenSlices = _ds(image.spacing[0])
    ds.SliceLocation = _ds(float(np.dot(position, np.cross(along_row, along_column))))
    _set_grayscale_pixels(ds, pixels, rescale, "HU" if image.modality == "CT" else None)
    if image.modality == "CT":
        ds.KVP = ""
    else:
        _set_mr_acquisition(ds)
    _add_file_meta(ds)
    return ds


def slice_geometry(image: MedImage, z: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image Position (Patient) of slice `z` of a 3D `image` and its row and column direction cosines.

    All three are DICOM (x, y, z) = (L, P, S) vectors: the position of the slice's first voxel, the
    direction of increasing column index (array ``x``) and of increasing row index (array ``y``).
    """
    affine = medimage_affine_xyz_lps(image.spacing, image.origin, image.direction)
    position = affine[:3, 3] + affine[:3, 2] * z
    return position, affine[:3, 0] / image.spacing[2], affine[:3, 1] / image.spacing[1]


def _set_mr_acquisition(ds: Dataset) -> None:
    # No scanner acquired these pixels: "RM" (research mode) and "NONE" are the honest defined terms.
    ds.ScanningSequence = "RM"
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = ""
    ds.RepetitionTime = ""
    ds.EchoTime = ""
    ds.EchoTrainLength = ""


def _set_grayscale_pixels(ds: Dataset, pixels: np.ndarray, rescale: Rescale, rescale_type: str | None) -> None:
    """Image Pixel and rescale attributes for 16-bit stored values `pixels` (``(Y, X)`` or ``(T, Y, X)``).

    `rescale_type` is None for the legacy MR IOD, which has no Modality LUT module: there a rescale is
    written only when the values need one (a widely read extension), and without Rescale Type.
    """
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if rescale.dtype == np.int16 else 0
    if rescale_type or (rescale.slope, rescale.intercept) != (1.0, 0.0):
        ds.RescaleIntercept = _ds(rescale.intercept)
        ds.RescaleSlope = _ds(rescale.slope)
    if rescale_type:
        ds.RescaleType = rescale_type
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    # Pixel data is bytes already; the VR must say 16-bit words.
    ds["PixelData"].VR = "OW"


def _enhanced(image: MedImage, slices: list[Dataset]) -> Dataset:
    """One Legacy Converted Enhanced CT/MR file from a series of single slices (highdicom)."""
    first = slices[0]
    converter = {"CT": hd.legacy.LegacyConvertedEnhancedCTImage, "MR": hd.legacy.LegacyConvertedEnhancedMRImage}[
        image.modality
    ]
    ds = converter(
        slices,
        series_instance_uid=first.SeriesInstanceUID,
        series_number=first.SeriesNumber,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    # The source slices live only in memory: a reference to their series would point at nothing.
    del ds.ReferencedSeriesSequence
    ds.SeriesDescription = first.SeriesDescription
    ds.Laterality = first.Laterality
    # Enhanced objects allow only PRIMARY as value 2 (highdicom sets it), and their value 3 "image
    # flavor" for a stack of parallel slices is VOLUME, where the legacy objects say AXIAL/OTHER.
    frame_types = ds.SharedFunctionalGroupsSequence[0][f"{image.modality}ImageFrameTypeSequence"][0]
    ds.ImageType = frame_types.FrameType = [*ds.ImageType[:2], "VOLUME", *ds.ImageType[3:]]
    return ds


def _secondary_capture_datasets(image: MedImage, base: Dataset) -> list[tuple[str, Dataset]]:
    """One Secondary Capture file: single frame for ``yx``/``yxc``, multi-frame for ``tyx``/``tyxc``.

    Secondary Capture has no plane geometry: Pixel Spacing is kept, a 2D origin and direction are not.
    """
    ds = _series_attributes(image, base)
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = 1
    ds.ConversionType = "SYN" if "SyntheticData" in base else "WSD"
    ds.PatientOrientation = ""
    ds.PixelSpacing = [_ds(image.spacing[0]), _ds(image.spacing[1])]
    array = np.asarray(image.array)
    if image.is_rgb:
        _set_rgb_pixels(ds, array)
    else:
        rescale = rescale_for(array, signed=False)
        rescale_type = "HU" if image.units == "HU" else "US"
        _set_grayscale_pixels(ds, to_stored(array, rescale), rescale, rescale_type)
    if image.has_time:
        ds.SOPClassUID = (
            MultiFrameTrueColorSecondaryCaptureImageStorage
            if image.is_rgb
            else MultiFrameGrayscaleWordSecondaryCaptureImageStorage
        )
        ds.NumberOfFrames = array.shape[0]
        if image.time_spacing:
            ds.FrameTime = _ds(image.time_spacing)
            ds.FrameIncrementPointer = Tag("FrameTime")
        else:  # no frame rate is known, and none is made up: frames are only labelled in order
            ds.FrameLabelVector = [f"t={t}" for t in range(array.shape[0])]
            ds.FrameIncrementPointer = Tag("FrameLabelVector")
        if not image.is_rgb:
            ds.PresentationLUTShape = "IDENTITY"
    else:
        ds.SOPClassUID = SecondaryCaptureImageStorage
    _add_file_meta(ds)
    return [("", ds)]


def _set_rgb_pixels(ds: Dataset, array: np.ndarray) -> None:
    """8-bit RGB pixels from ``(..., Y, X, 3)`` values in 0..255 (alpha dropped)."""
    rgb = array[..., :3]
    if rgb.min() < 0 or rgb.max() > 255:
        raise InputError(
            f"colour image values span {rgb.min()}..{rgb.max()}; DICOM RGB holds 0..255: rescale it to 8 bits"
        )
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rgb.shape[-3:-1]
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(np.rint(rgb).astype(np.uint8)).tobytes()


def _file_stem(image: MedImage, synthetic: bool) -> str:
    description = f"SYNTHETIC {image.name}" if synthetic else image.name
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", description).strip("._") or "image"
    return name[:64]


def _check_targets(out: Path, paths: Sequence[Path]) -> None:
    """Refuse before writing anything when a file to write exists already."""
    clashes = [p for p in paths if p.exists()]
    if clashes:
        raise InputError(
            f"{len(clashes)} file(s) to write exist already in {out}, e.g. {clashes[0].name}; "
            "choose an empty folder or rename the image (files are never overwritten)"
        )


def _ds(value: float) -> str:
    """A decimal string (at most 16 characters) for `value`."""
    return format_number_as_ds(float(value))


def _lo(text: str) -> str:
    """`text` cut to the 64 characters a LO (long string) element holds."""
    return text[:64]


def _add_file_meta(ds: Dataset) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
