"""One rule for what is ours: `medsynth.io.recognise`, followed by `medsynth.io.read` and the napari reader.

Checked on every file that pydicom, pydicom-data and nibabel ship for their own tests (DICOM with and
without suffix or preamble, DICOMDIRs, NIfTI, Analyze, MINC, MGH, PAR/REC, AFNI, tractograms, text).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.testing import data_path as NIBABEL_DATA
from pydicom.data import get_testdata_file

from medsynth.errors import InputError, UnreadableFileError
from medsynth.io import read, read_image
from medsynth.io import dicom as dicom_module
from medsynth.io import nifti as nifti_module
from medsynth.io.recognise import FileKind, recognise
from napari_medsynth.reader import get_reader


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def _real_files() -> list[Path]:
    roots = [Path(get_testdata_file("CT_small.dcm")).parent, Path(get_testdata_file("RG1_UNCR.dcm")).parent]
    roots += [Path(NIBABEL_DATA), Path(nib.__file__).parent / "nicom" / "tests" / "data"]
    return [path for root in roots for path in _files(root)]


@pytest.fixture
def dispatched(monkeypatch) -> list[tuple[str, Path]]:
    """Which reader `read` hands each path to (the readers themselves are replaced: only the decision is tested)."""
    calls: list[tuple[str, Path]] = []
    for module, name in [(dicom_module, "read_dicom_file"), (dicom_module, "read_dicom_folder"), (nifti_module, "read_nifti")]:
        monkeypatch.setattr(module, name, lambda path, name=name, **_: calls.append((name, Path(path))))
    return calls


def test_reader_and_read_agree_on_every_real_test_file(dispatched):
    readers = {FileKind.NIFTI: "read_nifti", FileKind.DICOM: "read_dicom_file"}
    files = _real_files()
    assert len(files) > 300
    kinds = {}
    for path in files:
        kind = kinds[path] = recognise(path)
        assert (get_reader(str(path)) is not None) is (kind is not None), path
        if kind is None:
            with pytest.raises(UnreadableFileError, match="unknown file type"):
                read(path)
        else:
            read(path)
            assert dispatched[-1] == (readers[kind], path)
    nifti = {p.name for p, kind in kinds.items() if kind is FileKind.NIFTI}
    assert {"example4d.nii.gz", "anatomical.nii", "example_nifti2.nii.gz"} <= nifti
    assert all(p.name.endswith((".nii", ".nii.gz")) for p, kind in kinds.items() if kind is FileKind.NIFTI)
    foreign = [p for p, kind in kinds.items() if kind is None]
    assert {".PAR", ".mnc", ".mgz", ".hdr", ".trk", ".gz", ".txt"} <= {p.suffix for p in foreign}


def test_every_dicom_image_is_recognised_and_nothing_else_is_taken_for_dicom():
    """pydicom decides (forcing a read of files without a preamble): its images are all ours, by name or by bytes."""
    by_bytes = 0
    for path in _real_files():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom warns about each file it has to force
                dataset = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            is_image = "SOPClassUID" in dataset and "Rows" in dataset
        except Exception:  # noqa: BLE001 - whatever pydicom cannot parse is no DICOM image
            dataset, is_image = None, False
        kind = recognise(path)
        if is_image:
            assert kind is FileKind.DICOM, path
        if kind is FileKind.DICOM and not path.name.lower().endswith((".dcm", ".dicom", ".ima")):
            by_bytes += 1
            assert dataset is not None and len(dataset) > 0, path
    assert by_bytes >= 80  # the suffixless files of pydicom's DICOMDIR trees (IM00000J, 4648, ...)


def _ct_without_preamble(path: Path, *, meta: bool) -> Path:
    """CT_small.dcm written as older archives hold it: no 128-byte preamble, with or without the file meta group."""
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    dataset.preamble = None
    if not meta:
        del dataset.file_meta
    dataset.save_as(path, enforce_file_format=False)
    return path


def test_suffixless_dicom_without_preamble_is_ours(tmp_path):
    for meta in (True, False):
        path = _ct_without_preamble(tmp_path / f"1.2.840.113619.2.55.{int(meta)}", meta=meta)
        assert path.read_bytes()[128:132] != b"DICM"
        assert recognise(path) is FileKind.DICOM and get_reader(str(path)) is not None
    expected = read_image(get_testdata_file("CT_small.dcm"))
    np.testing.assert_array_equal(read_image(tmp_path / "1.2.840.113619.2.55.1").array, expected.array)


def test_a_suffixless_file_that_is_not_dicom_is_nobodys(tmp_path):
    path = tmp_path / "notes"
    path.write_text("scanned on Tuesday\n" * 20)
    assert recognise(path) is None and get_reader(str(path)) is None
    with pytest.raises(UnreadableFileError, match=r"notes.*unknown file type"):
        read(path)


def _zarr_store(folder: Path) -> Path:
    """An OME-Zarr image store as zarr writes it: metadata files at the root, chunks in a sub-folder."""
    folder.mkdir()
    (folder / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    (folder / ".zattrs").write_text(json.dumps({"multiscales": [{"datasets": [{"path": "0"}]}]}))
    (folder / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group"}))
    (folder / "0").mkdir()
    (folder / "0" / ".zarray").write_text(json.dumps({"shape": [4, 4], "chunks": [4, 4], "dtype": "<u2"}))
    (folder / "0" / "0.0").write_bytes(np.arange(16, dtype="<u2").tobytes())
    return folder


def test_folders_are_ours_only_with_dicom_files_directly_inside(tmp_path):
    zarr = _zarr_store(tmp_path / "image.zarr")
    nifti = tmp_path / "nifti"
    nifti.mkdir()
    shutil.copy(Path(NIBABEL_DATA) / "anatomical.nii", nifti / "anatomical.nii")
    series = tmp_path / "series"
    series.mkdir()
    _ct_without_preamble(series / "IM00001", meta=True)
    (series / "README").write_text("one CT slice")
    dicomdir_only = tmp_path / "index"
    dicomdir_only.mkdir()
    shutil.copy(Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests" / "DICOMDIR", dicomdir_only / "DICOMDIR")

    for folder in (zarr, nifti, dicomdir_only, tmp_path / "missing"):
        assert recognise(folder) is None and get_reader(str(folder)) is None, folder
    with pytest.raises(InputError, match=r"nifti: holds no DICOM images.*NIfTI files \(anatomical\.nii\): open those files"):
        read(nifti)
    with pytest.raises(InputError, match=r"image\.zarr: holds no DICOM images.*sub-folders are not searched: open one of 0"):
        read(zarr)

    assert recognise(series) is FileKind.DICOM_FOLDER and get_reader(str(series)) is not None
    (image,) = read(series)
    assert image.metadata["skipped_files"] == ["README"] and image.array.shape == (128, 128)
