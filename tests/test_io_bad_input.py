"""Every kind of bad input raises one clear medsynth error naming the file and the fix, and no input
file is ever modified."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import get_decoder
from pydicom.uid import JPEG2000Lossless, generate_uid

from medsynth.errors import InputError, MissingDecoderError, UnreadableFileError
from medsynth.io.read import read, read_image


def _fingerprint(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


class Inputs:
    """A folder of a test's input files that must come out of the test byte-for-byte unchanged."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.before: dict[str, tuple[str, int]] | None = None

    def freeze(self) -> None:
        self.before = _fingerprint(self.folder)


@pytest.fixture
def inputs(tmp_path: Path) -> Iterator[Inputs]:
    folder = tmp_path / "inputs"
    folder.mkdir()
    checked = Inputs(folder)
    yield checked
    assert checked.before is not None, "the test never froze its inputs"
    assert _fingerprint(folder) == checked.before


def _ct_bytes() -> bytes:
    return Path(get_testdata_file("CT_small.dcm")).read_bytes()


def test_truncated_pixel_data(inputs: Inputs) -> None:
    path = inputs.folder / "cut.dcm"
    path.write_bytes(_ct_bytes()[:-5000])
    inputs.freeze()
    with pytest.raises(UnreadableFileError, match=r"cut\.dcm.*pixel data cannot be decoded.*again"):
        read(path)


def test_truncated_header(inputs: Inputs) -> None:
    path = inputs.folder / "cut.dcm"
    path.write_bytes(_ct_bytes()[:1000])
    inputs.freeze()
    with pytest.raises(UnreadableFileError, match=r"cut\.dcm.*no image.*truncated"):
        read(path)


def test_corrupt_header(inputs: Inputs) -> None:
    data = bytearray(_ct_bytes())
    # Make an element's length run far past the end of the file.
    offset = data.index(b"\x08\x00\x60\x00")  # (0008,0060) Modality
    data[offset + 6 : offset + 8] = b"\xff\x7f"
    (inputs.folder / "corrupt.dcm").write_bytes(bytes(data))
    inputs.freeze()
    with pytest.raises(UnreadableFileError, match=r"corrupt\.dcm.*(corrupt|truncated|decoded|no image)"):
        read(inputs.folder / "corrupt.dcm")


def test_non_dicom_named_dcm(inputs: Inputs) -> None:
    path = inputs.folder / "photo.dcm"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    inputs.freeze()
    with pytest.raises(UnreadableFileError, match=r"photo\.dcm.*not a DICOM file.*convert"):
        read(path)


def test_folder_without_images(inputs: Inputs) -> None:
    (inputs.folder / "README.txt").write_text("scans are in the sub-folder")
    (inputs.folder / "scan").mkdir()
    inputs.freeze()
    with pytest.raises(InputError, match=r"inputs.*holds no DICOM images.*sub-folders are not searched.*scan"):
        read(inputs.folder)


def test_folder_with_only_a_truncated_file_says_why(inputs: Inputs) -> None:
    (inputs.folder / "slice.dcm").write_bytes(_ct_bytes()[:1000])
    inputs.freeze()
    with pytest.raises(InputError, match=r"inputs.*holds no DICOM images.*slice\.dcm \(DICOM without image data"):
        read(inputs.folder)


def test_successful_reads_leave_the_files_unchanged(inputs: Inputs) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for z in range(3):
        ds.SOPInstanceUID, ds.ImagePositionPatient = generate_uid(), [0, 0, z]
        ds.save_as(inputs.folder / f"{z}.dcm")
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6, 2), np.float32), np.eye(4)), inputs.folder / "dyn.nii")
    inputs.freeze()
    image = read_image(inputs.folder / "dyn.nii")
    with pytest.raises(ValueError):
        image.array[0, 0, 0, 0] = 5  # a read-only map of the file: nothing can write through it
    assert read_image(inputs.folder).array.shape == (3, 128, 128)


def test_corrupt_slice_in_a_series_folder_is_named(inputs: Inputs) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.save_as(inputs.folder / "001.dcm")
    (inputs.folder / "002.dcm").write_bytes(b"garbage" * 50)
    inputs.freeze()
    with pytest.raises(UnreadableFileError, match=r"002\.dcm.*not a DICOM file"):
        read(inputs.folder)


def test_compressed_file_without_a_decoder(inputs: Inputs, monkeypatch: pytest.MonkeyPatch) -> None:
    path = inputs.folder / "mr_j2k.dcm"
    shutil.copy(get_testdata_file("MR2_J2KR.dcm"), path)
    inputs.freeze()
    decoder = get_decoder(JPEG2000Lossless)
    # As on a machine where neither pillow's nor pylibjpeg's JPEG 2000 plugin can load.
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-openjpeg>=2.0")})
    with pytest.raises(MissingDecoderError, match=r"mr_j2k\.dcm.*JPEG 2000.*pip install pylibjpeg pylibjpeg-openjpeg"):
        read(path)


def test_decoder_check_also_guards_folders(inputs: Inputs, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(get_testdata_file("MR2_J2KR.dcm"), inputs.folder / "a.dcm")
    inputs.freeze()
    monkeypatch.setattr(get_decoder(JPEG2000Lossless), "_available", {})
    with pytest.raises(MissingDecoderError, match=r"a\.dcm.*JPEG 2000"):
        read(inputs.folder)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nifti_with_non_finite_values(inputs: Inputs, bad: float) -> None:
    data = np.zeros((4, 5, 6), np.float32)
    data[1, 2, 3] = bad
    nib.save(nib.Nifti1Image(data, np.eye(4)), inputs.folder / "bad.nii")
    inputs.freeze()
    with pytest.raises(InputError, match=r"bad\.nii.*NaN or infinite.*nan_to_num"):
        read(inputs.folder / "bad.nii")


def test_five_dimensional_nifti(inputs: Inputs) -> None:
    nib.save(nib.Nifti1Image(np.zeros((3, 4, 5, 2, 3), np.float32), np.eye(4)), inputs.folder / "vectors.nii.gz")
    inputs.freeze()
    with pytest.raises(InputError, match=r"vectors\.nii\.gz.*5 dimensions.*Split"):
        read(inputs.folder / "vectors.nii.gz")


def test_truncated_nifti(inputs: Inputs) -> None:
    nib.save(nib.Nifti1Image(np.zeros((30, 40, 50), np.float32), np.eye(4)), inputs.folder / "cut.nii")
    data = (inputs.folder / "cut.nii").read_bytes()
    (inputs.folder / "cut.nii").write_bytes(data[: len(data) // 2])
    inputs.freeze()
    with pytest.raises(UnreadableFileError, match=r"cut\.nii.*truncated"):
        read(inputs.folder / "cut.nii")


def test_missing_path(inputs: Inputs) -> None:
    inputs.freeze()
    with pytest.raises(UnreadableFileError, match=r"nowhere\.nii\.gz.*does not exist.*Check the path"):
        read(inputs.folder / "nowhere.nii.gz")


def test_unreadable_path(inputs: Inputs, monkeypatch: pytest.MonkeyPatch) -> None:
    path = inputs.folder / "locked.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), path)
    inputs.freeze()
    if os.geteuid() == 0:
        # root may read any file: take the permission away the way the reader asks for it.
        monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
        with pytest.raises(UnreadableFileError, match=r"locked\.dcm.*permission"):
            read(path)
        return
    mode = path.stat().st_mode
    path.chmod(0)
    try:
        with pytest.raises(UnreadableFileError, match=r"locked\.dcm.*permission"):
            read(path)
    finally:
        path.chmod(mode)


def test_unknown_extension(inputs: Inputs) -> None:
    (inputs.folder / "scan.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    inputs.freeze()
    with pytest.raises(UnreadableFileError, match=r"scan\.png.*unknown file type.*NIfTI"):
        read(inputs.folder / "scan.png")


def test_dicom_with_an_unusual_name_is_still_read(inputs: Inputs) -> None:
    path = inputs.folder / "1.2.840.113619.2.55.3"
    shutil.copy(get_testdata_file("CT_small.dcm"), path)
    inputs.freeze()
    assert read_image(path).modality == "CT"


def test_read_image_names_the_series_when_there_are_several(inputs: Inputs) -> None:
    for description in ("arterial", "venous"):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
        ds.SeriesDescription = description
        ds.save_as(inputs.folder / f"{description}.dcm")
    inputs.freeze()
    with pytest.raises(InputError, match=r"holds 2 images: 'arterial'.*'venous'.*read\(\)"):
        read_image(inputs.folder)
