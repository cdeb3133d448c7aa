"""Reading and writing medical images: NIfTI (nibabel) and DICOM (pydicom, highdicom).

Every reader returns `MedImage` objects and every writer takes them; see `medsynth.io.image` for the
axis, orientation and unit conventions. Format modules load on first use, so importing
`medsynth.io.image` alone stays cheap.
"""

from importlib import import_module

from medsynth.io.image import MedImage, SyntheticProvenance

_LAZY = {
    "read": "medsynth.io.read",
    "read_image": "medsynth.io.read",
    "write_nifti": "medsynth.io.nifti",
    "write_dicom": "medsynth.io.dicom_write",
    "write_dicom_seg": "medsynth.io.dicom_seg",
}

__all__ = ["MedImage", "SyntheticProvenance", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medsynth.io' has no attribute {name!r}")
