"""NIfTI reading and writing: orientation, geometry, time, scaling, labels, synthetic marking, memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from medsynth.errors import InputError
from medsynth.io.image import MedImage, SyntheticProvenance
from medsynth.io.nifti import write_nifti
from medsynth.io.read import read, read_image

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _world_lps_in_array_order(image: MedImage, index_zyx: np.ndarray) -> np.ndarray:
    return (image.affine @ np.r_[index_zyx, 1.0])[:-1]


def _memmap_base(array: np.ndarray) -> np.memmap | None:
    base = array
    while base is not None:
        if isinstance(base, np.memmap):
            return base
        base = base.base
    return None


def _assert_same_geometry(a: MedImage, b: MedImage) -> None:
    # NIfTI-1 stores the affine as float32.
    np.testing.assert_allclose(a.spacing, b.spacing, rtol=1e-6)
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-4)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-6)


def test_real_4d_file_voxels_land_at_nibabels_world_positions(nibabel_example4d: Path) -> None:
    img = nib.load(nibabel_example4d)
    data = np.asanyarray(img.dataobj)
    image = read_image(nibabel_example4d)

    assert image.axes == "tzyx"
    assert image.array.shape == (2, 24, 96, 128)
    # The file says 2000 with unit "sec"; the reader follows the header and flags the odd value.
    assert image.time_spacing == pytest.approx(2000.0 * 1000.0)
    assert "time_note" in image.metadata
    # The file is L-A-S: y must be flipped so that it runs to posterior.
    assert np.all(np.diag(image.direction) > 0.9)

    inverse = np.linalg.inv(image.affine)
    rng = np.random.default_rng(0)
    for i, j, k in zip(rng.integers(0, 128, 20), rng.integers(0, 96, 20), rng.integers(0, 24, 20), strict=True):
        world_lps = (RAS_TO_LPS @ img.affine @ [i, j, k, 1])[:3][::-1]
        index = (inverse @ np.r_[world_lps, 1.0])[:3]
        assert np.allclose(index, np.round(index), atol=1e-4)
        z, y, x = np.round(index).astype(int)
        assert image.array[1, z, y, x] == data[i, j, k, 1]


@pytest.mark.parametrize(
    ("axes", "shape", "time_spacing"),
    [("yx", (7, 9), None), ("zyx", (4, 5, 6), None), ("tzyx", (3, 4, 5, 6), 40.0)],
)
def test_round_trip_keeps_voxels_and_geometry(tmp_path: Path, axes: str, shape: tuple, time_spacing) -> None:
    rng = np.random.default_rng(1)
    n = 2 if axes == "yx" else 3
    direction = np.eye(n)
    direction[:, 0] *= -1  # one flipped axis: the reader must give it back in the same world place
    image = MedImage(
        rng.normal(size=shape).astype(np.float32),
        axes,
        spacing=(0.5, 0.8, 2.5)[-n:],
        origin=(10.0, -20.0, 30.5)[-n:],
        direction=direction,
        time_spacing=time_spacing,
        modality="MR",
    )
    back = read_image(write_nifti(image, tmp_path / "img.nii.gz"))

    assert back.axes == axes
    assert back.time_spacing == time_spacing
    assert back.modality == "MR"
    # The flipped axis is reoriented on reading; the same voxel must sit at the same world point.
    flipped = np.flip(image.array, axis=axes.index("yx"[0] if n == 2 else "z"))
    np.testing.assert_array_equal(back.array, flipped)
    last = np.array(shape[-n:]) - 1
    corner = np.zeros(n)
    corner[0] = last[0]
    np.testing.assert_allclose(_world_lps_in_array_order(back, corner), image.origin, atol=1e-4)


def test_round_trip_oblique_affine(tmp_path: Path) -> None:
    rotation = Rotation.from_euler("xyz", [10, -20, 30], degrees=True).as_matrix()
    rng = np.random.default_rng(2)
    image = MedImage(rng.normal(size=(5, 6, 7)).astype(np.float32), "zyx", (2.0, 1.5, 0.7), (3.0, -4.0, 5.0), rotation)
    back = read_image(write_nifti(image, tmp_path / "oblique.nii"))
    np.testing.assert_array_equal(back.array, image.array)
    _assert_same_geometry(back, image)


def test_labels_round_trip_in_the_smallest_unsigned_type(tmp_path: Path) -> None:
    small = np.zeros((3, 4, 5), dtype=np.int64)
    small[1, 2, 3] = 7
    big = small.copy()
    big[0, 0, 0] = 300
    for values, dtype in ((small, np.uint8), (big, np.uint16)):
        labels = MedImage(values, "zyx", (1.0, 1.0, 2.0), is_label=True, name="lesion")
        path = write_nifti(labels, tmp_path / f"lesion_{dtype.__name__}_mask.nii.gz")
        assert nib.load(path).get_data_dtype() == dtype
        assert nib.load(path).header.get_intent()[0] == "label"
        back = read_image(path)
        assert back.is_label and back.array.dtype == dtype
        np.testing.assert_array_equal(back.array, values)


def test_negative_labels_are_refused(tmp_path: Path) -> None:
    labels = MedImage(np.full((2, 3, 4), -1, dtype=np.int16), "zyx", (1.0, 1.0, 1.0), is_label=True)
    with pytest.raises(InputError, match=r"\[0, 65535\]"):
        write_nifti(labels, tmp_path / "bad_seg.nii")
    assert not list(tmp_path.iterdir())


def test_label_detection_by_name_dtype_and_option(tmp_path: Path) -> None:
    integers = np.arange(24, dtype=np.int16).reshape(2, 3, 4) % 3
    for name in ("brain_seg.nii.gz", "tumour_label.nii", "liver-mask.nii.gz", "plain.nii.gz"):
        nib.save(nib.Nifti1Image(integers, np.eye(4)), tmp_path / name)
    nib.save(nib.Nifti1Image(integers.astype(np.float32), np.eye(4)), tmp_path / "float_mask.nii.gz")
    nib.save(nib.Nifti1Image(integers.astype(np.float32) + 0.5, np.eye(4)), tmp_path / "half.nii.gz")

    assert read_image(tmp_path / "brain_seg.nii.gz").is_label
    assert read_image(tmp_path / "tumour_label.nii").is_label
    assert read_image(tmp_path / "liver-mask.nii.gz").is_label
    assert not read_image(tmp_path / "plain.nii.gz").is_label
    assert not read_image(tmp_path / "float_mask.nii.gz").is_label
    assert not read_image(tmp_path / "brain_seg.nii.gz", as_label=False).is_label
    forced = read_image(tmp_path / "float_mask.nii.gz", as_label=True)
    assert forced.is_label and forced.array.dtype == np.uint8
    with pytest.raises(InputError, match="half.nii.gz.*non-integer"):
        read_image(tmp_path / "half.nii.gz", as_label=True)


def test_synthetic_marking_is_written_and_read_back(tmp_path: Path) -> None:
    provenance = SyntheticProvenance("dcgan", "0.1.0", checkpoint="ck3f2a.pt", seed=7, description="x" * 200)
    image = MedImage(np.ones((2, 3, 4), np.float32), "zyx", (1.0, 1.0, 1.0), synthetic=provenance)
    path = write_nifti(image, tmp_path / "synthetic.nii.gz")
    header = nib.load(path).header
    descrip = bytes(header["descrip"]).rstrip(b"\x00").decode()
    assert descrip.startswith("SYNTHETIC by medsynth 0.1.0") and len(descrip) <= 80
    assert bytes(header["intent_name"]).rstrip(b"\x00") == b"SYNTHETIC"
    assert read_image(path).synthetic == provenance

    # Without our header extension (another tool re-saved it) the descrip alone still tells.
    header.extensions.clear()
    nib.save(nib.Nifti1Image(np.ones((2, 3, 4), np.float32), np.eye(4), header), tmp_path / "resaved.nii")
    recovered = read_image(tmp_path / "resaved.nii").synthetic
    assert recovered is not None
    assert (recovered.model, recovered.model_version, recovered.seed) == ("dcgan", "0.1.0", 7)
    assert recovered.checkpoint == "ck3f2a.pt"

    plain = write_nifti(MedImage(np.ones((2, 3), np.float32), "yx", (1.0, 1.0)), tmp_path / "real.nii")
    assert read_image(plain).synthetic is None
    assert bytes(nib.load(plain).header["intent_name"]).rstrip(b"\x00") == b""


def test_scale_slope_and_intercept_are_applied(tmp_path: Path) -> None:
    stored = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    img = nib.Nifti1Image(stored, np.eye(4))
    img.header.set_slope_inter(2.0, -10.0)
    nib.save(img, tmp_path / "ct.nii")
    image = read_image(tmp_path / "ct.nii")
    assert image.array.dtype == np.float32
    np.testing.assert_array_equal(image.array, np.transpose(stored * 2.0 - 10.0, (2, 1, 0))[:, ::-1, ::-1])
    assert image.metadata["scl_slope"] == 2.0


def test_time_units_are_converted_to_milliseconds(tmp_path: Path) -> None:
    img = nib.Nifti1Image(np.zeros((2, 3, 4, 5), np.float32), np.eye(4))
    img.header.set_zooms((1.0, 1.0, 1.0, 2.5))
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, tmp_path / "fmri.nii.gz")
    image = read_image(tmp_path / "fmri.nii.gz")
    assert image.axes == "tzyx" and image.array.shape == (5, 4, 3, 2)
    assert image.time_spacing == pytest.approx(2500.0)
    assert "time_note" not in image.metadata


def test_uncompressed_4d_is_a_read_only_view_of_a_memory_map(tmp_path: Path) -> None:
    data = np.random.default_rng(3).normal(size=(6, 5, 4, 3)).astype(np.float32)
    affine = np.diag([-2.0, 2.0, 3.0, 1.0])  # x runs to L already, y to A: only y is flipped
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "dyn.nii")
    image = read_image(tmp_path / "dyn.nii")
    assert _memmap_base(image.array) is not None
    assert not image.array.flags.writeable
    assert image.array.shape == (3, 4, 5, 6)
    np.testing.assert_array_equal(image.array[2, 1], data[:, ::-1, 1, 2].T)


def test_singleton_slice_reads_as_2d(tmp_path: Path) -> None:
    data = np.arange(12, dtype=np.float32).reshape(3, 4, 1)
    nib.save(nib.Nifti1Image(data, np.diag([-1.0, -1.0, 1.0, 1.0])), tmp_path / "slice.nii.gz")
    image = read_image(tmp_path / "slice.nii.gz")
    assert image.axes == "yx"
    np.testing.assert_array_equal(image.array, data[:, :, 0].T)


def test_write_replaces_atomically_and_checks_the_name(tmp_path: Path) -> None:
    image = MedImage(np.ones((2, 3), np.float32), "yx", (1.0, 1.0))
    target = tmp_path / "out.nii"
    target.write_bytes(b"old")
    assert write_nifti(image, target) == target
    assert read_image(target).array.shape == (2, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii"]
    with pytest.raises(InputError, match=r"out\.png.*\.nii"):
        write_nifti(image, tmp_path / "out.png")
    rgb = MedImage(np.zeros((2, 3, 3), np.uint8), "yxc", (1.0, 1.0))
    with pytest.raises(InputError, match="RGB"):
        write_nifti(rgb, tmp_path / "rgb.nii")
    nan = MedImage(np.full((2, 3), np.nan, np.float32), "yx", (1.0, 1.0))
    with pytest.raises(InputError, match="NaN"):
        write_nifti(nan, tmp_path / "nan.nii")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii"]


def test_read_returns_a_list_for_a_file(nibabel_example4d: Path) -> None:
    images = read(nibabel_example4d)
    assert len(images) == 1 and images[0].name == "example4d"
    assert images[0].metadata["source"] == str(nibabel_example4d)


def test_reader_modules_load_no_heavy_library_until_used() -> None:
    code = (
        "import sys, medsynth.io.read, medsynth.io.nifti, medsynth.io.dicom;"
        "print(sorted(m for m in ('torch', 'nibabel', 'pydicom', 'napari') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
