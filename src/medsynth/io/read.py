"""The one entry point for reading: a path in, `MedImage` objects out, whatever the format.

What a path holds is decided by `medsynth.io.recognise`, the rule the napari reader follows too:

- ``.nii`` / ``.nii.gz``: one image (`medsynth.io.nifti`).
- a DICOM file (``.dcm``, ``.dicom``, ``.ima``, or any name whose first bytes are DICOM's): one
  image, or one per stack (`medsynth.io.dicom`).
- a folder: every DICOM series directly inside it, one image per series (`medsynth.io.dicom`); a
  folder without DICOM files is an InputError that says what it holds.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from medsynth.errors import InputError, UnreadableFileError
from medsynth.io.image import MedImage
from medsynth.io.recognise import FileKind, recognise

SUPPORTED = "NIfTI (.nii, .nii.gz), DICOM files (.dcm or DICOM files of any name) and folders of DICOM files"


def read(path: str | os.PathLike[str], *, as_label: bool | None = None, keep_rgb: bool = False) -> list[MedImage]:
    """Read every image at `path`.

    Args:
        path: a NIfTI file, a DICOM file, or a folder holding DICOM series (one level, not recursive).
        as_label: NIfTI only: True reads label maps, False images, None decides by integer dtype and
            a label-like file name (``*_seg*``, ``*label*``, ``*mask*``).
        keep_rgb: keep colour DICOM as RGB (axes ending in ``c``) instead of converting to grayscale.

    Returns:
        One `MedImage` per image or series found, never empty.

    Raises:
        UnreadableFileError: missing or unreadable path, unknown format, corrupt file.
        MissingDecoderError: compressed pixel data without an installed decoder.
        InputError: data medsynth cannot use (5D, NaN/Inf, a folder without images, ...).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise UnreadableFileError(_not_found_message(path))
    if not os.access(path, os.R_OK):
        raise UnreadableFileError(f"{path}: cannot be read (permission denied). Fix its permissions or copy it.")
    kind = recognise(path)
    if kind is FileKind.NIFTI:
        from medsynth.io.nifti import read_nifti

        return [read_nifti(path, as_label=as_label)]
    if kind is FileKind.DICOM:
        from medsynth.io.dicom import read_dicom_file

        return read_dicom_file(path, keep_rgb=keep_rgb)
    if path.is_dir():
        # Also a folder without DICOM files: its InputError says what the folder holds and where to look.
        from medsynth.io.dicom import read_dicom_folder

        return read_dicom_folder(path, keep_rgb=keep_rgb)
    raise UnreadableFileError(
        f"{path}: unknown file type {path.suffix!r}. medsynth reads {SUPPORTED}; convert the file to "
        "NIfTI or DICOM first."
    )


def _not_found_message(path: Path) -> str:
    """Why `path` cannot be found: a symbolic link loop, a broken link, or nothing there."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return (
                f"{path}: is a symbolic link loop (following its links leads back to them). Point the link at the "
                "real file or folder, or open that instead."
            )
    if path.is_symlink():
        return f"{path}: is a broken symbolic link to {os.readlink(path)}, which does not exist. Fix the link."
    return f"{path}: does not exist. Check the path (and that the drive is mounted)."


def read_image(path: str | os.PathLike[str], **kwargs: object) -> MedImage:
    """Read exactly one image from `path` (keyword arguments as for `read`).

    Raises:
        InputError: `path` holds several images; the message names each series so one can be chosen.
    """
    images = read(path, **kwargs)  # type: ignore[arg-type]
    if len(images) == 1:
        return images[0]
    found = "; ".join(
        f"{im.name!r} ({im.metadata.get('series_uid', '?')}, {'x'.join(map(str, im.array.shape))})" for im in images
    )
    raise InputError(
        f"{path}: holds {len(images)} images: {found}. Use read() to get all of them, or point at a folder "
        "or file holding only one series."
    )
