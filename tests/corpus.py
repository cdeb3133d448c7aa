"""The bad-input corpus of the readers: each case builds one input (a file, a folder or a link) from real
test data and says what reading it must give: a medsynth error whose message names the file, problem and
fix, or a correct read, with an `InputWarning` naming the file where something had to be assumed.

Cases run in `tests/test_bad_input_corpus.py`; `fingerprint` is how a test shows an input unchanged.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.pixels import get_decoder
from pydicom.uid import JPEGExtended12Bit, generate_uid

from medsynth.errors import InputError, MissingDecoderError, UnreadableFileError
from medsynth.io import MedImage


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Path], Path]
    """Makes the input inside the given folder and returns the path to read."""
    match: str
    """Regular expression the error, or else the one `InputWarning`, must match; empty: no warning."""
    error: type[Exception] | None = None
    check: Callable[[list[MedImage]], None] | None = None
    """What must hold of a successful read."""
    keep_rgb: bool = False


def fingerprint(folder: Path) -> dict[str, str]:
    """Content hash of every file and target of every link under `folder`."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            out[str(path)] = "link to " + str(path.readlink())
        elif path.is_file():
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _ct() -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file("CT_small.dcm"))


def _copy(name: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        return Path(shutil.copy(get_testdata_file(name), folder / name))

    return build


def _nifti(name: str, **fields) -> Callable[[Path], Path]:
    """A 4 x 5 x 6 file with 2 x 3 x 4 mm voxels whose header `fields` are then set as a broken writer would.

    The header is patched in the file, since nibabel repairs some of these fields when it saves.
    """

    def build(folder: Path) -> Path:
        path = folder / name
        image = nib.Nifti1Image(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6), np.diag([2.0, 3.0, 4.0, 1.0]))
        nib.save(image, path)
        raw = path.read_bytes()
        header = nib.Nifti1Header(binaryblock=raw[:348])
        for field, value in fields.items():
            header[field] = value
        path.write_bytes(header.binaryblock + raw[348:])
        return path

    return build


def _spacing(expected: tuple[float, ...]) -> Callable[[list[MedImage]], None]:
    def check(images: list[MedImage]) -> None:
        [image] = images
        np.testing.assert_allclose(image.spacing, expected)
        assert np.isfinite(image.affine).all()

    return check


def _ct_with(name: str, **changes) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        ds = _ct()
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        ds.save_as(folder / name)
        return folder / name

    return build


def _identity_orientation(images: list[MedImage]) -> None:
    [image] = images
    assert image.array.shape == (128, 128)
    np.testing.assert_array_equal(image.direction, np.eye(2))


def _slices_without_orientation(folder: Path) -> Path:
    ds = _ct()
    for z in range(3):
        ds.SOPInstanceUID, ds.InstanceNumber = generate_uid(), z + 1
        ds.ImagePositionPatient = [0, 0, 5 * z]
        ds.ImageOrientationPatient = [0] * 6
        ds.save_as(folder / f"{z:03d}.dcm")
    return folder


def _shapes(*expected: tuple[int, ...]) -> Callable[[list[MedImage]], None]:
    def check(images: list[MedImage]) -> None:
        assert sorted(image.array.shape for image in images) == sorted(expected)

    return check


def _as_decoded_by_pydicom(name: str) -> Callable[[list[MedImage]], None]:
    """The read equals pydicom's own decoding of the whole file (these files have no rescale)."""

    def check(images: list[MedImage]) -> None:
        [image] = images
        np.testing.assert_array_equal(image.array, pydicom.dcmread(get_testdata_file(name)).pixel_array)

    return check


def _ct_without_meta_header(folder: Path) -> Path:
    ds = _ct()
    del ds.file_meta
    ds.preamble = None
    ds.save_as(folder / "no_meta_ct.dcm", enforce_file_format=False, implicit_vr=True, little_endian=True)
    return folder / "no_meta_ct.dcm"


def _same_as_ct_small(images: list[MedImage]) -> None:
    from medsynth.io import read_image

    [image] = images
    np.testing.assert_array_equal(image.array, read_image(get_testdata_file("CT_small.dcm")).array)
    assert image.modality == "CT" and image.units == "HU"


def _series_with_a_smaller_slice(folder: Path) -> Path:
    for z in range(4):
        ds = _ct()
        ds.SOPInstanceUID, ds.InstanceNumber, ds.ImagePositionPatient = generate_uid(), z + 1, [0, 0, 5 * z]
        if z == 2:
            ds.PixelData = np.ascontiguousarray(ds.pixel_array[::2, ::2]).tobytes()
            ds.Rows = ds.Columns = 64
        ds.save_as(folder / f"{z:03d}.dcm")
    return folder


def _link_loop(folder: Path) -> Path:
    (folder / "a.nii.gz").symlink_to(folder / "b.nii.gz")
    (folder / "b.nii.gz").symlink_to(folder / "a.nii.gz")
    return folder / "a.nii.gz"


def _broken_link(folder: Path) -> Path:
    (folder / "scan.dcm").symlink_to(folder / "moved" / "scan.dcm")
    return folder / "scan.dcm"


_GDCM = "gdcm" in get_decoder(JPEGExtended12Bit).available_plugins

CASES = [
    Case(
        "nifti zero sform: the qform is used",
        _nifti("zero_sform.nii", sform_code=1, srow_x=[0] * 4, srow_y=[0] * 4, srow_z=[0] * 4, qform_code=1),
        r"zero_sform\.nii: its sform is zero, singular or not finite, so the qform is used instead.*set_sform",
        check=_spacing((4.0, 3.0, 2.0)),
    ),
    Case(
        "nifti singular sform without qform: pixdim is used",
        _nifti("singular.nii", sform_code=2, srow_x=[2, 0, 4, 0], srow_y=[0, 3, 0, 0], srow_z=[0] * 4, qform_code=0),
        r"singular\.nii: its sform is .*singular.*a diagonal from pixdim",
        check=_spacing((4.0, 3.0, 2.0)),
    ),
    Case(
        "nifti non-finite sform and qform",
        _nifti("nan.nii", sform_code=1, srow_x=[np.nan] * 4, qform_code=1, quatern_b=np.nan),
        r"nan\.nii: its sform and qform are zero, singular or not finite, so a diagonal from pixdim",
        check=_spacing((4.0, 3.0, 2.0)),
    ),
    Case(
        "nifti zero pixdim and no transform",
        _nifti("zero_pixdim.nii", sform_code=0, qform_code=0, pixdim=[1, 0, 0, 0, 1, 1, 1, 1]),
        r"zero_pixdim\.nii: its header was repaired on reading \(pixdim\[1,2,3\] should be non-zero; setting 0 dims to 1\)",
        check=_spacing((1.0, 1.0, 1.0)),
    ),
    Case(
        "dicom zero orientation vectors",
        _ct_with("zero_iop.dcm", ImageOrientationPatient=[0] * 6),
        r"zero_iop\.dcm: Image Orientation \(Patient\) .* zero or parallel .*identity \(axial\) orientation",
        check=_identity_orientation,
    ),
    Case(
        "dicom parallel orientation vectors",
        _ct_with("parallel_iop.dcm", ImageOrientationPatient=[1, 0, 0, 1, 0, 0]),
        r"parallel_iop\.dcm: Image Orientation \(Patient\) .* zero or parallel",
        check=_identity_orientation,
    ),
    Case(
        "dicom series without usable orientation: one warning for the series",
        _slices_without_orientation,
        r"inputs: Image Orientation \(Patient\) .* \(in 3 file\(s\), e\.g\. 000\.dcm\)",
        check=_shapes((3, 128, 128)),
    ),
    Case(
        "badVR.dcm: Number of Frames '1A'",
        _copy("badVR.dcm"),
        r"badVR\.dcm: Number of Frames \(0028,0008\) is '1A', not a whole number.*Correct the value",
        error=InputError,
    ),
    Case(
        "deflated transfer syntax",
        _copy("image_dfl.dcm"),
        "",
        check=_as_decoded_by_pydicom("image_dfl.dcm"),
    ),
    Case(
        "RGB JPEG whose data set is encoded otherwise than its transfer syntax says",
        _copy("SC_rgb_jpeg.dcm"),
        "",
        check=_as_decoded_by_pydicom("SC_rgb_jpeg.dcm"),
        keep_rgb=True,
    ),
    Case(
        "rtstruct.dcm: an RT Structure Set without meta header",
        _copy("rtstruct.dcm"),
        r"rtstruct\.dcm: is a DICOM RT Structure Set Storage object \(written without the file meta header\).*"
        r"holds? no image. Open the image series",
        error=UnreadableFileError,
    ),
    Case(
        "explicit VR big endian without meta header",
        _copy("ExplVR_BigEndNoMeta.dcm"),
        r"ExplVR_BigEndNoMeta\.dcm: is a DICOM RT Ion Plan Storage object \(written without the file meta header\)",
        error=UnreadableFileError,
    ),
    Case(
        "explicit VR little endian without meta header",
        _copy("ExplVR_LitEndNoMeta.dcm"),
        r"ExplVR_LitEndNoMeta\.dcm: is a DICOM RT Ion Plan Storage object \(written without the file meta header\)",
        error=UnreadableFileError,
    ),
    Case("a CT image without meta header reads", _ct_without_meta_header, "", check=_same_as_ct_small),
    Case(
        "12-bit lossy JPEG",
        _copy("JPEG-lossy.dcm"),
        "" if _GDCM else r"JPEG-lossy\.dcm: .*JPEG Extended.*12 bits per sample.*pip install python-gdcm",
        error=None if _GDCM else MissingDecoderError,
        check=_shapes((1024, 256)),
    ),
    Case(
        "pixel data longer than Rows x Columns",
        _ct_with("excess.dcm", Rows=100),
        r"excess\.dcm: holds 32768 bytes of pixel data, more than its 100 rows x 128 columns x 1 frame\(s\)",
        check=_shapes((100, 128)),
    ),
    Case(
        "a slice of another size splits its series",
        _series_with_a_smaller_slice,
        r"inputs: series .* has 1 file\(s\) of another size than its 3 slices of 128x128: 002\.dcm",
        check=_shapes((64, 64), (3, 128, 128)),
    ),
    Case("symbolic link loop", _link_loop, r"a\.nii\.gz: is a symbolic link loop", error=UnreadableFileError),
    Case("broken symbolic link", _broken_link, r"scan\.dcm: is a broken symbolic link to .*moved", error=UnreadableFileError),
]
