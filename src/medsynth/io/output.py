"""Which format an output path asks for: a NIfTI file, or a folder of DICOM files.

Decided by the name alone, before any work, so that a mistyped suffix (``x.nii.gzz``) is refused
instead of silently becoming a DICOM folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from medsynth.errors import InputError
from medsynth.io.nifti import is_nifti_path

OutputFormat = Literal["nifti", "dicom"]
ACCEPTED = "a NIfTI file (.nii or .nii.gz) or a folder for DICOM files (a name without a suffix, or an existing folder)"


def output_format(path: str | os.PathLike[str]) -> OutputFormat:
    """``"nifti"`` for a ``.nii``/``.nii.gz`` name, ``"dicom"`` for a folder (existing, or a name without suffix).

    Raises:
        InputError: any other name; the message lists what is accepted.
    """
    path = Path(path)
    if is_nifti_path(path):
        return "nifti"
    if path.is_dir() or not path.suffix:
        return "dicom"
    if path.suffix.lower() in (".dcm", ".dicom"):
        hint = f"DICOM output is a folder of files: give a folder name such as {path.with_suffix('')}"
    else:
        hint = f"rename it, e.g. {path.name.split('.')[0] or 'output'}.nii.gz, or create the folder first to write DICOM"
    raise InputError(f"output {path}: unknown output type {path.suffix!r}. medsynth writes {ACCEPTED}; {hint}.")
