"""DICOM reading: single files (CT, MR, CR), the JPEG ultrasound cine, enhanced multi-frame, folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, pixel_array
from pydicom.uid import generate_uid

from medsynth.io.image import MedImage, SyntheticProvenance
from medsynth.io.read import read, read_image

AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
SAGITTAL = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]


def _world_of(image: MedImage, index: tuple[int, ...]) -> np.ndarray:
    return (image.affine @ np.r_[index, 1.0])[:-1]


def _index_of(image: MedImage, world_lps: np.ndarray) -> tuple[int, ...]:
    """Array index of the voxel at LPS point `world_lps` (given L, P, S)."""
    index = (np.linalg.inv(image.affine) @ np.r_[np.asarray(world_lps)[::-1], 1.0])[:-1]
    assert np.allclose(index, np.round(index), atol=1e-3), index
    return tuple(int(i) for i in np.round(index))


def _write_series(
    folder: Path,
    positions: list[list[float]],
    *,
    orientation: list[float] = AXIAL,
    series_uid: str | None = None,
    description: str = "axial CT",
    instance_numbers: list[int] | None = None,
) -> list[np.ndarray]:
    """Slices made from pydicom's CT_small, each with its own stored values (slice k adds 10 * k)."""
    folder.mkdir(exist_ok=True)
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    base = template.pixel_array
    series_uid = series_uid or generate_uid()
    stored = []
    for k, position in enumerate(positions):
        ds = template.copy()
        values = (base + 10 * k).astype(base.dtype)
        ds.PixelData = values.tobytes()
        ds.SeriesInstanceUID = series_uid
        ds.SeriesDescription = description
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = instance_numbers[k] if instance_numbers else k + 1
        ds.ImagePositionPatient = position
        ds.ImageOrientationPatient = orientation
        ds.save_as(folder / f"{description.replace(' ', '_')}_{k:03d}.dcm")
        stored.append(values)
    return stored


def test_ct_slice_is_in_hounsfield_units_with_its_geometry() -> None:
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    image = read_image(path)
    assert (image.axes, image.modality, image.units) == ("yx", "CT", "HU")
    np.testing.assert_array_equal(image.array, apply_modality_lut(ds.pixel_array, ds))
    assert image.spacing == pytest.approx([float(v) for v in ds.PixelSpacing])
    # Axial: the first pixel is at Image Position (Patient), given in (P, L) order.
    assert image.origin == pytest.approx([float(ds.ImagePositionPatient[1]), float(ds.ImagePositionPatient[0])])
    meta = image.metadata
    assert meta["series_uid"] == ds.SeriesInstanceUID and meta["study_uid"] == ds.StudyInstanceUID
    assert meta["patient_id"] == ds.PatientID and meta["frame_of_reference_uid"] == ds.FrameOfReferenceUID
    assert meta["image_position_patient"] == pytest.approx([float(v) for v in ds.ImagePositionPatient])
    assert image.synthetic is None


def test_monochrome1_radiograph_is_inverted_so_bright_is_dense() -> None:
    path = get_testdata_file("RG1_UNCR.dcm")
    ds = pydicom.dcmread(path)
    image = read_image(path)
    assert image.modality == "CR"
    stored_max = 2**ds.BitsStored - 1
    np.testing.assert_array_equal(image.array, stored_max - ds.pixel_array.astype(np.int64))
    assert image.metadata["monochrome1_inverted"] is True
    assert image.metadata["window_center"] == pytest.approx(stored_max - float(ds.WindowCenter))


def test_oblique_mr_slice_keeps_its_stored_orientation() -> None:
    path = get_testdata_file("MR2_UNCR.dcm")
    ds = pydicom.dcmread(path)
    image = read_image(path)
    assert image.modality == "MR" and image.units == ""
    np.testing.assert_allclose(image.array, apply_modality_lut(ds.pixel_array, ds), rtol=1e-6)
    assert image.metadata["plane"] == "stored"
    assert image.spacing == pytest.approx([0.195313, 0.195313])


@pytest.mark.slow
def test_jpeg_ultrasound_cine_frames_become_time() -> None:
    path = get_testdata_file("color3d_jpeg_baseline.dcm")
    gray = read_image(path)
    assert (gray.axes, gray.array.shape, gray.array.dtype) == ("tyx", (120, 480, 640), np.uint8)
    assert gray.time_spacing == pytest.approx(33.333)
    assert gray.modality == "US"
    # Ultrasound region: 0.0510 cm per pixel.
    assert gray.spacing == pytest.approx([0.5104970559477806] * 2)
    frame = pixel_array(path, index=57)  # RGB, as pydicom converts it
    luminance = frame @ np.array([0.299, 0.587, 0.114])
    assert np.abs(gray.array[57] - luminance).mean() < 1.5

    rgb = read_image(path, keep_rgb=True)
    assert (rgb.axes, rgb.array.shape) == ("tyxc", (120, 480, 640, 3))
    np.testing.assert_array_equal(rgb.array[57], frame)


def test_enhanced_ct_frames_form_a_volume_sorted_along_the_normal() -> None:
    path = get_testdata_file("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    image = read_image(path)
    assert (image.axes, image.array.shape, image.modality, image.units) == ("zyx", (2, 512, 512), "CT", "HU")
    assert image.spacing[1:] == pytest.approx([0.388672, 0.388672])
    frames = ds.pixel_array
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        z, y, x = _index_of(image, position)
        # Orientation -1,0,0: columns run to the patient's right, so the reader flips x.
        assert (y, x) == (0, 511)
        np.testing.assert_array_equal(image.array[z, :, ::-1], frames[i].astype(np.int32) - 1024)


def test_enhanced_mr_without_positions_reads_frames_as_slices() -> None:
    image = read_image(get_testdata_file("emri_small.dcm"))
    assert (image.axes, image.array.shape, image.modality) == ("zyx", (10, 64, 64), "MR")
    assert any("no slice positions" in note for note in image.metadata["notes"])


def test_folder_series_is_sorted_by_position_not_by_name_or_number(tmp_path: Path) -> None:
    positions = [[-10.0, -20.0, z] for z in (5.0, -5.0, 0.0, 10.0)]  # shuffled, 5 mm apart
    stored = _write_series(tmp_path / "series", positions, instance_numbers=[1, 2, 3, 4])
    (tmp_path / "series" / "notes.txt").write_text("not an image")
    image = read_image(tmp_path / "series")
    assert image.axes == "zyx" and image.array.shape == (4, 128, 128)
    assert image.spacing == pytest.approx([5.0, 0.661468, 0.661468])
    assert image.origin == pytest.approx([-5.0, -20.0, -10.0])
    for k, position in enumerate(positions):
        z, y, x = _index_of(image, position)
        assert (y, x) == (0, 0)
        np.testing.assert_array_equal(image.array[z], stored[k].astype(np.int32) - 1024)
    assert image.name == "axial CT"
    assert image.metadata["skipped_files"] == ["notes.txt"]
    assert "notes" not in image.metadata


def test_sagittal_series_is_reoriented_to_the_lps_layout(tmp_path: Path) -> None:
    positions = [[x, -50.0, 40.0] for x in (-2.0, 0.0, 2.0)]
    stored = _write_series(tmp_path, positions, orientation=SAGITTAL, description="sag")
    image = read_image(tmp_path)
    # Rows run to P, columns to I, slices to L: the reader puts S on z, P on y, L on x.
    assert image.array.shape == (128, 128, 3)
    np.testing.assert_allclose(image.direction, np.eye(3), atol=1e-9)
    for k, position in enumerate(positions):
        z, y, x = _index_of(image, position)  # the first stored pixel of slice k
        assert image.array[z, y, x] == stored[k][0, 0] - 1024
        assert image.array[z - 1, y + 1, x] == stored[k][1, 1] - 1024


def test_uneven_slices_are_reported(tmp_path: Path) -> None:
    _write_series(tmp_path, [[0.0, 0.0, z] for z in (0.0, 2.0, 4.0, 7.0)])
    image = read_image(tmp_path)
    assert image.spacing[0] == pytest.approx(2.0)
    assert any("uneven slice spacing" in note for note in image.metadata["notes"])


def test_repeated_positions_make_a_time_series(tmp_path: Path) -> None:
    positions = [[0.0, 0.0, z] for z in (0.0, 3.0)] * 2
    stored = _write_series(tmp_path, positions, instance_numbers=[1, 2, 3, 4])
    image = read_image(tmp_path)
    assert image.axes == "tzyx" and image.array.shape == (2, 2, 128, 128)
    np.testing.assert_array_equal(image.array[1, 0], stored[2].astype(np.int32) - 1024)


def test_slices_without_positions_fall_back_to_instance_number(tmp_path: Path) -> None:
    stored = _write_series(tmp_path, [[0.0, 0.0, z] for z in (0.0, 1.0, 2.0)], instance_numbers=[3, 1, 2])
    for path in tmp_path.iterdir():
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(path)
    image = read_image(tmp_path)
    assert image.array.shape == (3, 128, 128)
    np.testing.assert_array_equal(image.array[0], stored[1].astype(np.int32) - 1024)
    assert any("acquisition order" in note for note in image.metadata["notes"])


def test_two_series_in_one_folder_give_two_named_images(tmp_path: Path) -> None:
    _write_series(tmp_path, [[0.0, 0.0, z] for z in (0.0, 1.0)], description="arterial")
    _write_series(tmp_path, [[0.0, 0.0, z] for z in (0.0, 2.0, 4.0)], description="venous")
    images = read(tmp_path)
    assert sorted((im.name, im.array.shape[0]) for im in images) == [("arterial", 2), ("venous", 3)]
    assert len({im.metadata["series_uid"] for im in images}) == 2
    assert all(im.metadata["source"] == str(tmp_path) for im in images)


def test_dicom_marked_synthetic_gives_its_provenance(tmp_path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    provenance = SyntheticProvenance("pix2pix", "0.2.0", checkpoint="ep40.safetensors", seed=11)
    ds.SyntheticData = "YES"
    ds.DerivationDescription = provenance.summary()
    ds.save_as(tmp_path / "synthetic.dcm")
    assert read_image(tmp_path / "synthetic.dcm").synthetic == provenance
