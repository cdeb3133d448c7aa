"""Reading and writing medical images: NIfTI (nibabel) and DICOM (pydicom, highdicom).

Every reader returns `MedImage` objects and every writer takes them; see `medsynth.io.image` for the
axis, orientation and unit conventions.
"""

from medsynth.io.dicom_seg import write_dicom_seg
from medsynth.io.dicom_write import write_dicom
from medsynth.io.image import MedImage, SyntheticProvenance
from medsynth.io.nifti import write_nifti
from medsynth.io.read import read, read_image

__all__ = [
    "MedImage",
    "SyntheticProvenance",
    "read",
    "read_image",
    "write_dicom",
    "write_dicom_seg",
    "write_nifti",
]
