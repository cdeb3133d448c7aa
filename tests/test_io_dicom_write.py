"""DICOM writing: synthetic marks, identity, geometry and voxel round trips, validator, DICOM-SEG."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut
from pydicom.uid import (
    CTImageStorage,
    MRImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from medsynth.errors import InputError, UnreadableFileError
from medsynth.io.dicom_seg import write_dicom_seg
from medsynth.io.dicom_write import write_dicom
from medsynth.io.image import MedImage, SyntheticProvenance
from medsynth.io.read import read, read_image

PROVENANCE = SyntheticProvenance("dcgan", "0.1.0", checkpoint="ct64.safetensors", seed=1234)
CT_REFERENCE = get_testdata_file("CT_small.dcm")

# dicom3tools' dictionary in Debian bookworm (2022-06) predates Synthetic Data (0008,001C), which the
# standard now lists in the SOP Common module; its "unknown tag" complaint about exactly that tag is the
# validator's age, not a defect of the file.
_STALE_DICTIONARY = "(0x0008,0x001c)"


def dciodvfy_errors(path: Path) -> list[str]:
    """The "Error" lines of dciodvfy for `path`; skips (locally) or fails (in CI) without the validator."""
    if shutil.which("dciodvfy") is None:
        if os.environ.get("CI"):
            pytest.fail("dciodvfy (Debian package dicom3tools) is required in CI")
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error") and _STALE_DICTIONARY not in line]


def real_slice(name: str) -> tuple[np.ndarray, pydicom.Dataset]:
    ds = pydicom.dcmread(get_testdata_file(name))
    return apply_modality_lut(ds.pixel_array, ds).astype(np.float64), ds


@pytest.fixture
def ct_volume() -> MedImage:
    """4 x 32 x 32 CT in HU from CT_small.dcm's tissue, with sub-HU detail as a generator makes it."""
    hu, ds = real_slice("CT_small.dcm")
    crop = hu[48:80, 40:72]
    rng = np.random.default_rng(0)
    array = np.stack([crop + 25.0 * k for k in range(4)]) + rng.uniform(-0.5, 0.5, (4, 32, 32))
    position = [float(v) for v in ds.ImagePositionPatient]
    origin = (position[2], position[1] + 48 * 0.661468, position[0] + 40 * 0.661468)
    return MedImage(
        array.astype(np.float32), "zyx", (5.0, 0.661468, 0.661468), origin=origin,
        modality="CT", units="HU", name="ct", synthetic=PROVENANCE,
    )


@pytest.fixture
def mr_volume() -> MedImage:
    """3 x 32 x 32 MR intensities from MR_small.dcm, scaled to non-integer values."""
    mr, _ = real_slice("MR_small.dcm")
    array = np.stack([mr[16:48, 16:48] * f for f in (0.731, 1.0, 1.377)])
    tilt = np.deg2rad(20)
    direction = np.array([[np.cos(tilt), np.sin(tilt), 0], [-np.sin(tilt), np.cos(tilt), 0], [0, 0, 1]])
    return MedImage(
        array, "zyx", (0.8, 0.3125, 0.3125), origin=(6.6, -91.2, -83.9), direction=direction,
        modality="MR", name="mr", synthetic=PROVENANCE,
    )


def read_series(paths: list[Path]) -> list[pydicom.Dataset]:
    return sorted((pydicom.dcmread(p) for p in paths), key=lambda ds: int(ds.InstanceNumber))


def expected_position(image: MedImage, z: int) -> np.ndarray:
    """DICOM (x, y, z) position of slice z from MedImage's array-order geometry (S, P, L)."""
    world = np.asarray(image.origin) + image.direction[:, 0] * image.spacing[0] * z
    return world[::-1]


def test_ct_series_keeps_hu_geometry_and_marks_synthesis(ct_volume, tmp_path):
    paths = write_dicom(ct_volume, tmp_path / "ct")
    series = read_series(paths)
    assert len(series) == 4
    slope = float(series[0].RescaleSlope)
    for z, ds in enumerate(series):
        assert ds.SOPClassUID == CTImageStorage
        hu = apply_modality_lut(ds.pixel_array, ds)
        np.testing.assert_allclose(hu, ct_volume.array[z], atol=slope / 2 + 1e-6)
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], expected_position(ct_volume, z), atol=1e-4)
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(v) for v in ds.PixelSpacing] == [0.661468, 0.661468]
        assert float(ds.SliceThickness) == float(ds.SpacingBetweenSlices) == 5.0
        assert ds.FrameOfReferenceUID == series[0].FrameOfReferenceUID
        assert ds.SeriesInstanceUID == series[0].SeriesInstanceUID
        # Synthesis, by the standard's own attributes.
        assert ds.SyntheticData == "YES"
        assert list(ds.ImageType[:2]) == ["DERIVED", "SECONDARY"]
        assert ds.DerivationDescription == PROVENANCE.summary()
        assert "seed=1234" in ds.DerivationDescription and "checkpoint=ct64.safetensors" in ds.DerivationDescription
        equipment = ds.ContributingEquipmentSequence[0]
        purpose = equipment.PurposeOfReferenceCodeSequence[0]
        assert (purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning) == (
            "109100", "DCM", "Synthesizing Equipment"
        )
        assert (equipment.Manufacturer, equipment.ManufacturerModelName, equipment.SoftwareVersions) == (
            "medsynth", "dcgan", "0.1.0"
        )
        assert ds.Manufacturer == "medsynth"
    assert len({ds.SOPInstanceUID for ds in series}) == 4
    assert "SYNTHETIC" in series[0].SeriesDescription


def test_mr_float_intensities_round_trip_within_quantisation(mr_volume, tmp_path):
    series = read_series(write_dicom(mr_volume, tmp_path / "mr"))
    assert all(ds.SOPClassUID == MRImageStorage for ds in series)
    slope = float(series[0].RescaleSlope)
    value_range = float(np.ptp(mr_volume.array))
    assert slope <= value_range / 65000 * 1.001
    stack = np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in series])
    np.testing.assert_allclose(stack, mr_volume.array, atol=slope / 2 + 1e-9)
    row = [float(v) for v in series[0].ImageOrientationPatient]
    np.testing.assert_allclose(row[:3], mr_volume.direction[::-1, 2], atol=1e-6)
    np.testing.assert_allclose(row[3:], mr_volume.direction[::-1, 1], atol=1e-6)
    for z, ds in enumerate(series):
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], expected_position(mr_volume, z), atol=1e-4)


def test_integer_ct_is_stored_exactly(tmp_path):
    hu, _ = real_slice("CT_small.dcm")
    image = MedImage(np.stack([hu[:32, :32]] * 2).astype(np.int16), "zyx", (1, 1, 1), modality="CT", synthetic=PROVENANCE)
    series = read_series(write_dicom(image, tmp_path))
    assert float(series[0].RescaleSlope) == 1.0 and float(series[0].RescaleIntercept) == 0.0
    np.testing.assert_array_equal(np.stack([ds.pixel_array for ds in series]), image.array)


def test_identity_comes_from_the_reference_which_stays_untouched(ct_volume, tmp_path):
    before = hashlib.sha256(Path(CT_REFERENCE).read_bytes()).hexdigest()
    reference = pydicom.dcmread(CT_REFERENCE)
    reference_json = reference.to_json()
    original = ct_volume.array.copy()
    for ref in (CT_REFERENCE, reference):
        out = tmp_path / ("path" if isinstance(ref, str) else "dataset")
        ds = pydicom.dcmread(write_dicom(ct_volume, out, reference=ref)[0])
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate"):
            assert ds[keyword].value == reference[keyword].value, keyword
        assert ds.SeriesInstanceUID != reference.SeriesInstanceUID
        assert ds.FrameOfReferenceUID != reference.FrameOfReferenceUID
        assert ds.Manufacturer == "medsynth"  # the scanner of the reference did not make this image
    assert hashlib.sha256(Path(CT_REFERENCE).read_bytes()).hexdigest() == before
    assert reference.to_json() == reference_json
    np.testing.assert_array_equal(ct_volume.array, original)


def test_non_ascii_identity_survives_into_utf8(tmp_path):
    from pydicom.data import get_charset_files

    (reference,) = get_charset_files("chrGerm.dcm")
    image = MedImage(np.zeros((4, 4)), "yx", (1, 1), synthetic=PROVENANCE)
    ds = pydicom.dcmread(write_dicom(image, tmp_path, reference=reference)[0])
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == str(pydicom.dcmread(reference).PatientName) == "Äneas^Rüdiger"


def test_without_reference_the_patient_is_anonymous(ct_volume, tmp_path):
    ds = pydicom.dcmread(write_dicom(ct_volume, tmp_path)[0])
    assert str(ds.PatientName) == ""
    assert ds.PatientID == "SYNTHETIC"
    assert ds.PatientBirthDate == "" and ds.PatientSex == ""


def test_uids_are_fresh_on_every_run(ct_volume, tmp_path):
    runs = [read_series(write_dicom(ct_volume, tmp_path / str(k))) for k in range(2)]
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert runs[0][0][keyword].value != runs[1][0][keyword].value
    sops = {ds.SOPInstanceUID for run in runs for ds in run}
    assert len(sops) == 8


def test_real_derived_image_is_not_marked_synthetic(tmp_path):
    mr, _ = real_slice("MR_small.dcm")
    image = MedImage(mr * 0.5, "yx", (0.3125, 0.3125), modality="MR", name="denoised")
    ds = pydicom.dcmread(write_dicom(image, tmp_path)[0])
    assert "SyntheticData" not in ds
    assert "ContributingEquipmentSequence" not in ds
    assert ds.ConversionType == "WSD"
    assert "SYNTHETIC" not in ds.SeriesDescription
    assert list(ds.ImageType[:2]) == ["DERIVED", "SECONDARY"]


def test_2d_image_is_secondary_capture_with_conversion_type_syn(tmp_path):
    mr, _ = real_slice("MR_small.dcm")
    image = MedImage(mr * 1.5, "yx", (0.3125, 0.3125), modality="MR", name="slice", synthetic=PROVENANCE)
    (path,) = write_dicom(image, tmp_path)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == SecondaryCaptureImageStorage
    assert ds.ConversionType == "SYN" and ds.SyntheticData == "YES"
    assert [float(v) for v in ds.PixelSpacing] == [0.3125, 0.3125]
    np.testing.assert_allclose(apply_modality_lut(ds.pixel_array, ds), image.array, atol=float(ds.RescaleSlope) / 2 + 1e-9)
    assert dciodvfy_errors(path) == []


def test_rgb_image_is_a_colour_secondary_capture(tmp_path):
    mr, _ = real_slice("MR_small.dcm")
    grey = np.rint(255 * (mr - mr.min()) / np.ptp(mr))
    rgb = np.stack([grey, 255 - grey, np.full_like(grey, 128)], axis=-1)
    image = MedImage(rgb, "yxc", (0.3125, 0.3125), name="overlay", synthetic=PROVENANCE)
    (path,) = write_dicom(image, tmp_path)
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "RGB" and ds.ConversionType == "SYN"
    np.testing.assert_array_equal(ds.pixel_array, rgb)
    assert dciodvfy_errors(path) == []


def test_2d_time_series_is_one_multiframe_file(tmp_path):
    hu, _ = real_slice("CT_small.dcm")
    frames = np.stack([np.roll(hu[:32, :48], k, axis=1) for k in range(5)]) + 1024
    image = MedImage(frames, "tyx", (0.5, 0.5), time_spacing=40.0, modality="US", name="cine", synthetic=PROVENANCE)
    (path,) = write_dicom(image, tmp_path)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    assert int(ds.NumberOfFrames) == 5 and float(ds.FrameTime) == 40.0
    np.testing.assert_array_equal(apply_modality_lut(ds.pixel_array, ds), frames)
    assert ds.SyntheticData == "YES" and ds.ConversionType == "SYN"
    assert dciodvfy_errors(path) == []


def test_4d_volume_is_one_series_per_time_point(mr_volume, tmp_path):
    image = mr_volume.with_array(np.stack([mr_volume.array, mr_volume.array * 2]), axes="tzyx", time_spacing=2000.0)
    paths = write_dicom(image, tmp_path)
    series: dict[str, list[pydicom.Dataset]] = {}
    for ds in map(pydicom.dcmread, paths):
        series.setdefault(ds.SeriesInstanceUID, []).append(ds)
    assert len(series) == 2
    by_time = {int(s[0].TemporalPositionIdentifier): sorted(s, key=lambda d: int(d.InstanceNumber)) for s in series.values()}
    assert sorted(by_time) == [1, 2]
    assert len({s[0].FrameOfReferenceUID for s in series.values()}) == 1
    for t, slices in by_time.items():
        stack = np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in slices])
        np.testing.assert_allclose(stack, image.array[t - 1], atol=float(slices[0].RescaleSlope) / 2 + 1e-9)
        assert all(int(ds.NumberOfTemporalPositions) == 2 for ds in slices)
        assert all(ds.SyntheticData == "YES" for ds in slices)


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_enhanced_multiframe_round_trip(ct_volume, modality, tmp_path):
    image = ct_volume.with_array(ct_volume.array, modality=modality)
    (path,) = write_dicom(image, tmp_path, enhanced=True)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID.name.startswith("Legacy Converted Enhanced")
    assert int(ds.NumberOfFrames) == 4
    assert ds.SyntheticData == "YES"
    assert ds.ContributingEquipmentSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109100"
    transform = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    values = ds.pixel_array * float(transform.RescaleSlope) + float(transform.RescaleIntercept)
    # highdicom orders the frames along the slice normal for its 3D dimension index: match by position.
    positions = [expected_position(image, z) for z in range(4)]
    seen = []
    for frame, frame_values in zip(ds.PerFrameFunctionalGroupsSequence, values):
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        (z,) = [z for z, p in enumerate(positions) if np.allclose(p, position, atol=1e-4)]
        np.testing.assert_allclose(frame_values, image.array[z], atol=float(transform.RescaleSlope) / 2 + 1e-6)
        seen.append(z)
    assert sorted(seen) == [0, 1, 2, 3]
    assert dciodvfy_errors(path) == []


@pytest.mark.parametrize("kind", ["CT", "MR"])
def test_volume_series_pass_dciodvfy(ct_volume, mr_volume, kind, tmp_path):
    image = ct_volume if kind == "CT" else mr_volume
    paths = write_dicom(image, tmp_path, reference=CT_REFERENCE)
    for path in (paths[0], paths[-1]):
        assert dciodvfy_errors(path) == []


def lesion_labels(image: MedImage) -> MedImage:
    labels = np.zeros(image.array.shape, np.uint8)
    labels[1:3, 4:12, 6:14] = 3
    labels[2, 20:26, 18:30] = 9
    return image.with_array(labels, is_label=True, name="lesions", units="")


def test_dicom_seg_is_aligned_marked_and_valid(ct_volume, tmp_path):
    sources = write_dicom(ct_volume, tmp_path / "ct", reference=CT_REFERENCE)
    labels = lesion_labels(ct_volume)
    # Sources in reverse order: each label slice must still land on the image at its own position.
    path = write_dicom_seg(labels, sources[::-1], tmp_path / "lesions.dcm", provenance=PROVENANCE, segment_names={9: "nodule"})
    seg = hd.seg.segread(path)
    assert seg.SOPClassUID == SegmentationStorage
    assert seg.SyntheticData == "YES"
    purposes = [item.PurposeOfReferenceCodeSequence[0].CodeValue for item in seg.ContributingEquipmentSequence]
    assert "109100" in purposes  # Synthesizing Equipment, beside highdicom's own items
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Lesion 3", "nodule"]
    assert all(s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Lesion" for s in seg.SegmentSequence)
    images = read_series(sources)
    assert seg.PatientID == images[0].PatientID and seg.StudyInstanceUID == images[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == images[0].FrameOfReferenceUID
    numbers = seg.get_pixels_by_source_instance(
        [ds.SOPInstanceUID for ds in images], combine_segments=True, relabel=False
    )
    ids = np.array([0, 3, 9])[numbers]
    np.testing.assert_array_equal(ids, labels.array)
    assert dciodvfy_errors(path) == []


def test_dicom_seg_on_an_enhanced_image_follows_its_frame_order(ct_volume, tmp_path):
    (source,) = write_dicom(ct_volume, tmp_path / "ct", enhanced=True)
    labels = lesion_labels(ct_volume)
    path = write_dicom_seg(labels, [source], tmp_path / "seg.dcm", provenance=PROVENANCE)
    assert dciodvfy_errors(path) == []
    seg = hd.seg.segread(path)
    image = pydicom.dcmread(source)
    numbers = seg.get_pixels_by_source_frame(
        image.SOPInstanceUID, list(range(1, 5)), combine_segments=True, relabel=False,
        assert_missing_frames_are_empty=True,
    )
    for frame, frame_numbers in zip(image.PerFrameFunctionalGroupsSequence, numbers):
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        (z,) = [z for z in range(4) if np.allclose(expected_position(ct_volume, z), position, atol=1e-4)]
        np.testing.assert_array_equal(np.array([0, 3, 9])[frame_numbers], labels.array[z])


def test_dicom_seg_of_a_2d_secondary_capture(tmp_path):
    mr, _ = real_slice("MR_small.dcm")
    image = MedImage(mr, "yx", (0.3125, 0.3125), modality="MR", name="slice", synthetic=PROVENANCE)
    sources = write_dicom(image, tmp_path / "sc")
    labels = image.with_array((mr > np.percentile(mr, 90)).astype(np.uint8), is_label=True, name="bright")
    path = write_dicom_seg(labels, sources, tmp_path / "seg.dcm", provenance=None)
    seg = hd.seg.segread(path)
    mask = seg.get_pixels_by_source_instance([pydicom.dcmread(sources[0]).SOPInstanceUID], combine_segments=True)
    np.testing.assert_array_equal(mask[0], labels.array)
    assert dciodvfy_errors(path) == []


def test_dicom_seg_refuses_labels_off_the_source_grid(ct_volume, tmp_path):
    sources = write_dicom(ct_volume, tmp_path / "ct")
    labels = lesion_labels(ct_volume)
    shifted = labels.with_array(labels.array, origin=(labels.origin[0] + 2.0, *labels.origin[1:]))
    with pytest.raises(InputError, match="no slice of the labels"):
        write_dicom_seg(shifted, sources, tmp_path / "a.dcm", provenance=PROVENANCE)
    with pytest.raises(InputError, match="do not match"):
        write_dicom_seg(labels, sources[:3], tmp_path / "b.dcm", provenance=PROVENANCE)
    empty = labels.with_array(np.zeros_like(labels.array))
    with pytest.raises(InputError, match="background"):
        write_dicom_seg(empty, sources, tmp_path / "c.dcm", provenance=PROVENANCE)
    assert not any((tmp_path / n).exists() for n in ("a.dcm", "b.dcm", "c.dcm"))


def test_bad_input_is_refused_with_a_clear_error(ct_volume, tmp_path):
    with pytest.raises(InputError, match="label map"):
        write_dicom(lesion_labels(ct_volume), tmp_path)
    nan = ct_volume.array.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        write_dicom(ct_volume.with_array(nan), tmp_path)
    with pytest.raises(InputError, match="modality 'OT'"):
        write_dicom(ct_volume.with_array(ct_volume.array, modality="OT"), tmp_path)
    with pytest.raises(UnreadableFileError, match="not a file"):
        write_dicom(ct_volume, tmp_path, reference=tmp_path / "missing.dcm")
    not_dicom = tmp_path / "notes.dcm"
    not_dicom.write_text("not a DICOM file")
    with pytest.raises(UnreadableFileError, match="cannot be read as DICOM"):
        write_dicom(ct_volume, tmp_path / "x", reference=not_dicom)
    assert not (tmp_path / "x").exists()


def test_existing_files_are_never_overwritten_and_no_temp_files_remain(ct_volume, tmp_path):
    paths = write_dicom(ct_volume, tmp_path)
    before = [p.read_bytes() for p in paths]
    with pytest.raises(InputError, match="exist already"):
        write_dicom(ct_volume, tmp_path)
    assert [p.read_bytes() for p in paths] == before
    assert sorted(tmp_path.iterdir()) == sorted(paths)


def assert_same_image(read_back: MedImage, written: MedImage, tolerance: float) -> None:
    assert read_back.axes == written.axes
    np.testing.assert_allclose(read_back.array, written.array, atol=tolerance)
    np.testing.assert_allclose(read_back.spacing, written.spacing, atol=1e-6)
    np.testing.assert_allclose(read_back.origin, written.origin, atol=1e-4)
    np.testing.assert_allclose(read_back.direction, written.direction, atol=1e-6)
    assert read_back.modality == written.modality
    assert read_back.synthetic == PROVENANCE


@pytest.mark.parametrize("enhanced", [False, True])
def test_medsynth_reader_gets_back_the_ct_volume(ct_volume, enhanced, tmp_path):
    write_dicom(ct_volume, tmp_path, enhanced=enhanced)
    image = read_image(tmp_path)
    assert image.units == "HU"
    slope = float(np.ptp(ct_volume.array)) / 65000
    assert_same_image(image, ct_volume, slope)


def test_medsynth_reader_gets_back_a_tilted_mr_volume(mr_volume, tmp_path):
    write_dicom(mr_volume, tmp_path)
    assert_same_image(read_image(tmp_path), mr_volume, float(np.ptp(mr_volume.array)) / 65000)


def test_medsynth_reader_gets_back_2d_and_cine(tmp_path):
    mr, _ = real_slice("MR_small.dcm")
    still = MedImage(mr * 1.5, "yx", (0.3125, 0.25), modality="MR", name="slice", synthetic=PROVENANCE)
    write_dicom(still, tmp_path / "still")
    assert_same_image(read_image(tmp_path / "still"), still, float(np.ptp(still.array)) / 65000)
    cine = MedImage(np.stack([np.roll(mr, k, axis=0) for k in range(3)]), "tyx", (0.5, 0.5), time_spacing=40.0,
                    modality="US", name="cine", synthetic=PROVENANCE)
    write_dicom(cine, tmp_path / "cine")
    (image,) = read(tmp_path / "cine")
    assert_same_image(image, cine, 0)
    assert image.time_spacing == 40.0
