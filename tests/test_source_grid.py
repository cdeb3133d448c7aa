"""Files derived from a NIfTI file keep its grid (shape, voxel order, sform/qform and codes), checked with
nibabel and SimpleITK; 2D sequences keep their time axis in NIfTI."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medsynth.data.samples import load_sample, sample_path
from medsynth.io import read_image, write_nifti


@pytest.fixture(scope="module")
def ras_file(tmp_path_factory) -> Path:
    """A 40 x 36 x 20 block of the MNI152 template: a RAS file (sform code 2, no qform), 1 mm voxels."""
    block = nib.load(sample_path("mni152")).slicer[80:120, 100:136, 80:100]
    path = tmp_path_factory.mktemp("ras") / "mni_block.nii.gz"
    nib.save(block, path)
    return path


def _assert_same_grid(written: Path, source: Path, itk: bool = True) -> None:
    """Same shape, voxel order and geometry to nibabel and (with `itk`) to SimpleITK; same sform/qform codes."""
    a, b = nib.load(source), nib.load(written)
    assert b.shape == a.shape
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-6)
    np.testing.assert_allclose(b.header.get_qform(), a.header.get_qform(), atol=1e-5)
    assert [int(b.header[k]) for k in ("sform_code", "qform_code")] == [int(a.header[k]) for k in ("sform_code", "qform_code")]
    if not itk:
        return
    itk_a, itk_b = sitk.ReadImage(str(source)), sitk.ReadImage(str(written))
    assert itk_b.GetSize() == itk_a.GetSize()
    np.testing.assert_allclose(itk_b.GetOrigin(), itk_a.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(itk_b.GetSpacing(), itk_a.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(itk_b.GetDirection(), itk_a.GetDirection(), atol=1e-6)


@pytest.mark.gui
def test_labels_painted_over_a_ras_nifti_are_saved_on_its_grid(make_napari_viewer, tmp_path, ras_file):
    viewer = make_napari_viewer()
    [image] = viewer.open(str(ras_file), plugin="napari-medsynth")
    viewer.layers.selection.active = image
    viewer._new_labels()  # what the layer list's "new labels layer" button does
    labels = viewer.layers[-1]
    labels.data[7, 20:24, 5:9] = 3
    labels.data[12, 3, 30] = 1
    viewer.layers.selection = {labels}
    path = tmp_path / "mni_block_seg.nii.gz"
    assert viewer.layers.save(str(path), selected=True, plugin="napari-medsynth") == [str(path)]

    _assert_same_grid(path, ras_file)
    stored = np.asarray(nib.load(path).dataobj)
    assert stored.dtype == np.uint8 and sorted(np.unique(stored)) == [0, 1, 3]
    # The voxel stored for a painted one lies where the viewer showed it, to nibabel and to ITK.
    shown_lps = np.asarray(labels.data_to_world((12, 3, 30)))[::-1]  # napari world is (S, P, L)
    [ijk] = np.argwhere(stored == 1)
    ras = nib.load(path).affine @ [*ijk, 1]
    np.testing.assert_allclose([-ras[0], -ras[1], ras[2]], shown_lps, atol=1e-4)
    itk = sitk.ReadImage(str(path))
    np.testing.assert_allclose(itk.TransformIndexToPhysicalPoint([int(v) for v in ijk]), shown_lps, atol=1e-4)
    assert sitk.GetArrayFromImage(itk)[tuple(ijk[::-1])] == 1

    # The image saved back is the same file content on the same grid.
    viewer.layers.selection = {image}
    back = tmp_path / "mni_block_copy.nii.gz"
    viewer.layers.save(str(back), selected=True, plugin="napari-medsynth")
    _assert_same_grid(back, ras_file)
    np.testing.assert_array_equal(np.asarray(nib.load(back).dataobj), np.asarray(nib.load(ras_file).dataobj))


def _saved(tmp_path: Path, name: str, data: np.ndarray, affine: np.ndarray, codes=(1, 1), time_step=None) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=codes[0])
    img.set_qform(affine, code=codes[1])
    if time_step is not None:
        img.header.set_xyzt_units("mm", "sec")
        img.header.set_zooms(img.header.get_zooms()[:3] + (time_step,))
    path = tmp_path / name
    nib.save(img, path)
    return path


# ITK reads a 2D file with a 2D direction matrix, so it refuses one whose plane is not axial (the source too).
GRIDS = {
    "permuted oblique, sform only": ((6, 7, 8), [[0, 0, 2.0, 10], [-1.5, 0, 0, 20], [0, 3.0, 0, -5], [0, 0, 0, 1]], (2, 0), True),
    "2D axial": ((6, 7), [[0.5, 0, 0, 3], [0, -0.7, 0, 4], [0, 0, 1, 37], [0, 0, 0, 1]], (1, 1), True),
    "2D sagittal": ((6, 7), [[0, 0, 1.0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]], (1, 1), False),
    "4D, qform only": ((6, 7, 8, 3), [[-1.0, 0, 0, 0], [0, 2, 0, 0], [0, 0, 3, 0], [0, 0, 0, 1]], (0, 1), True),
    "2D sequence": ((6, 7, 1, 4), [[0.5, 0, 0, 0], [0, 0.7, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], (1, 1), True),
}


@pytest.mark.parametrize("grid", GRIDS, ids=list(GRIDS))
def test_an_image_and_its_labels_are_written_on_the_grid_they_were_read_from(tmp_path, grid):
    shape, affine, codes, itk = GRIDS[grid]
    data = np.random.default_rng(0).integers(0, 6, shape).astype(np.int16)
    time_step = 0.05 if len(shape) == 4 else None
    source = _saved(tmp_path, "source.nii.gz", data, np.asarray(affine, float), codes, time_step)
    image = read_image(source)
    for name, written in (("image", image), ("labels", image.with_array(image.array, is_label=True))):
        path = write_nifti(written, tmp_path / f"{name}.nii.gz")
        _assert_same_grid(path, source, itk)
        np.testing.assert_array_equal(np.asarray(nib.load(path).dataobj), data)
        if len(shape) == 4:
            assert read_image(path).time_spacing == pytest.approx(50.0)


def test_an_image_moved_off_its_file_grid_is_written_where_it_now_lies(tmp_path, ras_file):
    image = read_image(ras_file)
    moved = image.with_array(image.array, origin=tuple(o + 5.0 for o in image.origin))
    back = read_image(write_nifti(moved, tmp_path / "moved.nii.gz"))
    np.testing.assert_allclose(back.origin, moved.origin, atol=1e-4)
    np.testing.assert_array_equal(back.array, image.array)


def test_a_2d_sequence_keeps_its_time_axis_in_nifti(tmp_path):
    cine = load_sample("us_cine")
    clip = cine.with_array(np.ascontiguousarray(cine.array[:10, ::4, ::4]), spacing=tuple(4 * s for s in cine.spacing))
    path = write_nifti(clip, tmp_path / "cine.nii.gz")
    stored = nib.load(path)
    assert stored.shape == (160, 120, 1, 10)
    assert stored.header.get_xyzt_units() == ("mm", "msec")
    assert stored.header.get_zooms()[3] == pytest.approx(33.333, abs=1e-3)
    back = read_image(path)
    assert back.axes == "tyx" and back.array.shape == (10, 120, 160)
    assert back.time_spacing == pytest.approx(33.333, abs=1e-3)
    assert back.spacing == pytest.approx(clip.spacing)
    np.testing.assert_array_equal(back.array, clip.array)
