"""Reading and writing medical images: NIfTI (nibabel) and DICOM (pydicom, highdicom).

Every reader returns `MedImage` objects and every writer takes them; see `medsynth.io.image` for the
axis, orientation and unit conventions. Writers load on first use (highdicom is slow to import).
"""

from importlib import import_module

from medsynth.io.image import MedImage, SyntheticProvenance

# Imported eagerly: the submodule `medsynth.io.read` would otherwise shadow the function `read`.
from medsynth.io.read import read, read_image

_LAZY = {
    "write_nifti": "medsynth.io.nifti",
    "write_dicom": "medsynth.io.dicom_write",
    "write_dicom_seg": "medsynth.io.dicom_seg",
}

__all__ = ["MedImage", "SyntheticProvenance", "read", "read_image", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medsynth.io' has no attribute {name!r}")
