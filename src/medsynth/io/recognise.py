"""What a path holds, told from its name and its first bytes: the one rule for `medsynth.io.read` and
the napari reader (which must not claim what it cannot open, e.g. a Zarr folder).

- ``.nii`` / ``.nii.gz``: `NIFTI`.
- ``.dcm``, ``.dicom``, ``.ima``: `DICOM` by name, so that a damaged one is reported as a damaged DICOM
  file rather than as an unknown type.
- any other file: `DICOM` when its bytes say so, either the ``DICM`` marker after the 128-byte
  preamble of the DICOM file format, or, for data sets written without that preamble (older
  scanners and archives), a first data element of group 0x0002 (file meta) or 0x0008 (where every
  image's SOP Class UID lies) in little or big endian, with an explicit VR (two capital letters) or
  an implicit 32-bit length that fits in the file. DICOM files often have no suffix at all
  (``1.2.840.113619.2.55.3``, ``IM00001``).
- a folder: `DICOM_FOLDER` when a visible file directly inside it (not ``DICOMDIR``) is DICOM by the
  rules above; sub-folders are not searched, as `medsynth.io.dicom.read_dicom_folder` does not.

Only a few bytes of each file are read, and pydicom is not imported: napari asks every reader plugin
about every path dropped onto the viewer.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path

from medsynth.io.nifti import NIFTI_SUFFIXES

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
PREAMBLE = 128
_DATASET_GROUPS = (0x0002, 0x0008)


class FileKind(Enum):
    NIFTI = "NIfTI"
    DICOM = "DICOM file"
    DICOM_FOLDER = "folder of DICOM files"


def recognise(path: str | os.PathLike[str]) -> FileKind | None:
    """The kind of `path` by the rules of the module docstring; None for anything else or a missing path."""
    path = Path(path)
    if path.is_dir():
        return FileKind.DICOM_FOLDER if any(is_series_file(p) for p in path.iterdir()) else None
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return FileKind.NIFTI
    if name.endswith(DICOM_SUFFIXES) or _has_dicom_bytes(path):
        return FileKind.DICOM
    return None


def is_series_file(path: Path) -> bool:
    """True for a file of a series folder that is DICOM: visible, not the ``DICOMDIR`` index, DICOM by name or bytes."""
    if path.name.startswith(".") or path.name.upper() == "DICOMDIR" or not path.is_file():
        return False
    return path.name.lower().endswith(DICOM_SUFFIXES) or _has_dicom_bytes(path)


def _has_dicom_bytes(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(PREAMBLE + 4)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    return head[PREAMBLE:] == b"DICM" or _starts_with_data_set(head, size)


def _starts_with_data_set(head: bytes, size: int) -> bool:
    """Whether `head` begins like a DICOM data set without the preamble; see the module docstring."""
    if len(head) < 8:
        return False
    for order in ("little", "big"):
        group = int.from_bytes(head[0:2], order)
        if group not in _DATASET_GROUPS:
            continue
        explicit_vr = head[4:6].isalpha() and head[4:6].isupper()
        if explicit_vr or int.from_bytes(head[4:8], order) <= size - 8:
            return True
    return False
