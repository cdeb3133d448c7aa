"""Writing a label map as a DICOM Segmentation (highdicom) aligned to images written by `write_dicom`.

One segment per non-zero label id, BINARY, property "Morphologically Abnormal Structure" / "Lesion"
(SNOMED CT). A SEG of synthetic lesions carries the same synthesis marks as the images
(Synthetic Data = YES, a "Synthesizing Equipment" Contributing Equipment item).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

import medsynth
from medsynth.errors import InputError, UnreadableFileError
from medsynth.io.dicom_write import save_atomic, slice_geometry, synthesizing_equipment
from medsynth.io.image import MedImage, SyntheticProvenance

POSITION_TOLERANCE_MM = 0.01
"""How far a label slice may lie from its source image's position and still count as the same plane."""


def write_dicom_seg(
    labels: MedImage,
    source_files: Sequence[str | Path],
    path: str | Path,
    *,
    provenance: SyntheticProvenance | None,
    segment_names: Mapping[int, str] | None = None,
) -> Path:
    """Write `labels` as one DICOM Segmentation file at `path` and return it.

    `labels.array` is ``(Z, Y, X)`` or ``(Y, X)`` of integer ids (0 = background) on the grid of the
    images in `source_files` (as `write_dicom` wrote them, in any order; a label slice is matched to
    the source image at the same position). `provenance` (default ``labels.synthetic``) marks the
    segmentation as synthetic. `segment_names` maps label ids to segment labels ("Lesion <id>" else).
    """
    provenance = provenance or labels.synthetic
    target = Path(path)
    if target.exists():
        raise InputError(f"{target} exists already; choose a new file name (files are never overwritten)")
    ids = _label_ids(labels)
    sources = [_read_source(Path(p)) for p in source_files]
    if not sources:
        raise InputError("no source images given; give the DICOM files write_dicom wrote for these labels")
    array = np.asarray(labels.array)
    numbers = np.where(array != 0, np.searchsorted(ids, array) + 1, 0).astype(np.uint16)
    frames = _frames_in_source_order(labels, numbers, sources)
    now = datetime.now()
    synthetic = provenance is not None
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            _segment(number, int(label_id), provenance, segment_names or {})
            for number, label_id in enumerate(ids, start=1)
        ],
        series_instance_uid=generate_uid(),
        series_number=1,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="medsynth",
        manufacturer_model_name=(provenance.model if synthetic else "medsynth")[:64],
        software_versions=(provenance.model_version if synthetic else medsynth.__version__)[:64],
        # Type 1 in Enhanced General Equipment; software has no serial number, so its version serves.
        device_serial_number=medsynth.__version__,
        series_description=f"SYNTHETIC {labels.name}"[:64] if synthetic else labels.name[:64],
        content_label="LESIONS",
        contributing_equipment=[synthesizing_equipment(provenance, now)] if synthetic else None,
    )
    if synthetic:
        seg.SyntheticData = "YES"
    if "FrameOfReferenceUID" not in seg:
        _fit_for_sources_without_frame_of_reference(seg, sources[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(seg, target)
    return target


def _fit_for_sources_without_frame_of_reference(seg: hd.seg.Segmentation, source: Dataset) -> None:
    """Adjust a SEG of Secondary Capture images (no frame of reference) so validators and readers take it."""
    # General Image asks for Patient Orientation when there is no plane geometry; empty means unknown.
    seg.PatientOrientation = source.get("PatientOrientation", "")
    # highdicom 0.28 writes Pixel Measures with Pixel Spacing alone here, which its own reader rejects
    # for lacking Slice Thickness; without a frame of reference the macro is optional, and the source
    # images keep their spacing.
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "PixelMeasuresSequence" in shared and "SliceThickness" not in shared.PixelMeasuresSequence[0]:
        del shared.PixelMeasuresSequence


def _label_ids(labels: MedImage) -> np.ndarray:
    """The sorted non-zero ids of `labels`; segment number k stands for the k-th of them."""
    if labels.axes not in ("zyx", "yx"):
        raise InputError(
            f"labels {labels.name!r} have axes {labels.axes!r}; a DICOM Segmentation takes one 'zyx' or 'yx' "
            "label map: write each time point separately"
        )
    array = np.asarray(labels.array)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.array_equal(array, np.rint(array)):
            raise InputError(
                f"labels {labels.name!r} hold non-integer values ({array.dtype}); give integer label ids"
            )
    if array.min() < 0:
        raise InputError(f"labels {labels.name!r} hold negative ids; use 0 for background and positive ids")
    ids = np.unique(array)
    ids = ids[ids != 0]
    if ids.size == 0:
        raise InputError(f"labels {labels.name!r} are all background (0); there is no segment to write")
    if ids.size > 65535:
        raise InputError(f"labels {labels.name!r} hold {ids.size} ids; a DICOM Segmentation holds at most 65535")
    return ids


def _read_source(path: Path) -> Dataset:
    if not path.is_file():
        raise UnreadableFileError(f"source image {path} does not exist; give the files write_dicom returned")
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)  # the SEG needs the headers only
    except (pydicom.errors.InvalidDicomError, OSError, ValueError) as exc:
        raise UnreadableFileError(
            f"source image {path} cannot be read as DICOM ({exc}); give the files write_dicom returned"
        ) from exc


def _frames_in_source_order(labels: MedImage, numbers: np.ndarray, sources: list[Dataset]) -> np.ndarray:
    """`numbers` (segment numbers shaped like ``labels.array``) as ``(F, Y, X)``, frame f on source frame f.

    highdicom pairs the k-th segmentation frame with the k-th source frame (files in the given order,
    frames within a multi-frame file in stored order), so each label slice is placed by position.
    """
    rows, columns = labels.array.shape[-2:]
    positions = [p for ds in sources for p in _frame_positions(ds)]
    slices = numbers.reshape((-1, rows, columns))
    if len(positions) != len(slices) or any((ds.Rows, ds.Columns) != (rows, columns) for ds in sources):
        raise InputError(
            f"labels {labels.name!r} of shape {labels.array.shape} do not match the source images "
            f"({len(positions)} frame(s) of {sources[0].Rows}x{sources[0].Columns} in {len(sources)} file(s)); "
            "give the images the labels were drawn on"
        )
    if labels.axes == "yx":
        return slices
    label_positions = [slice_geometry(labels, z)[0] for z in range(len(slices))]
    order = []
    for position in positions:
        if position is None:
            raise InputError(
                f"a source image of the 3D labels {labels.name!r} has no Image Position (Patient); "
                "give the CT/MR images write_dicom wrote for the volume"
            )
        match = [z for z, p in enumerate(label_positions) if np.allclose(p, position, atol=POSITION_TOLERANCE_MM)]
        if not match:
            raise InputError(
                f"a source image lies at {np.round(position, 3).tolist()} mm (x, y, z), where no slice of the "
                f"labels {labels.name!r} is; give the images written from the same geometry as the labels"
            )
        order.append(match[0])
    return slices[order]


def _frame_positions(ds: Dataset) -> list[np.ndarray | None]:
    """Image Position (Patient) of each frame of `ds` (None where it has none)."""
    if "PerFrameFunctionalGroupsSequence" in ds:
        return [
            np.asarray(frame.PlanePositionSequence[0].ImagePositionPatient, float)
            if "PlanePositionSequence" in frame else None
            for frame in ds.PerFrameFunctionalGroupsSequence
        ]
    if "ImagePositionPatient" in ds:
        return [np.asarray(ds.ImagePositionPatient, float)]
    return [None] * int(ds.get("NumberOfFrames", 1))


def _segment(
    number: int, label_id: int, provenance: SyntheticProvenance | None, names: Mapping[int, str]
) -> hd.seg.SegmentDescription:
    if provenance is None:
        algorithm = {"algorithm_type": hd.seg.SegmentAlgorithmTypeValues.MANUAL}
    else:
        algorithm = {
            "algorithm_type": hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            "algorithm_identification": hd.AlgorithmIdentificationSequence(
                name=provenance.model[:64],
                family=codes.DCM.ArtificialIntelligence,
                version=provenance.model_version[:64],
            ),
        }
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=names.get(label_id, f"Lesion {label_id}")[:64],
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        tracking_id=f"label {label_id}",
        tracking_uid=generate_uid(),
        **algorithm,
    )
