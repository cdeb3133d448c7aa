"""Sample data that pip packages ship, so that demos and tests need no network.

docs/data-sources.md gives each file's origin and licence.
"""

from __future__ import annotations

from dataclasses import dataclass
import importlib.util
from pathlib import Path

from medsynth.errors import InputError
from medsynth.io.image import MedImage


@dataclass(frozen=True)
class Sample:
    name: str
    title: str
    package: str
    """The pip package that ships the file (install it to get the sample)."""
    file: str


SAMPLES = {
    s.name: s
    for s in (
        Sample("us_cine", "Ultrasound cine, 120 frames (DICOM, JPEG)", "pydicom-data", "color3d_jpeg_baseline.dcm"),
        Sample("chest_xray", "Computed radiograph, 1841x1955 (DICOM)", "pydicom-data", "RG1_UNCR.dcm"),
        Sample("mr_slice", "MR slice, 1024x1024 (DICOM)", "pydicom-data", "MR2_UNCR.dcm"),
        Sample("ct_slice", "CT slice, 128x128, in HU (DICOM)", "pydicom", "CT_small.dcm"),
        Sample("mni152", "MNI152 2009a T1 template, 1 mm (NIfTI)", "nilearn", "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"),
        # The template's own tissue probability maps: on its grid, so each pairs with the T1 voxel by voxel.
        Sample("mni152_gm", "MNI152 2009a grey-matter probability map, 1 mm (NIfTI)", "nilearn", "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"),
        Sample("mni152_wm", "MNI152 2009a white-matter probability map, 1 mm (NIfTI)", "nilearn", "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"),
    )
}


def sample_path(name: str) -> Path:
    """The local file of sample `name`; InputError naming the package to install when it is missing."""
    sample = _get(name)
    try:
        path = _locate(sample)
    except (ImportError, ValueError, FileNotFoundError):
        path = None
    if path is None or not path.is_file():
        raise InputError(
            f"sample {name!r} needs the file {sample.file} from the {sample.package!r} package, which is "
            f"not installed: run `pip install {sample.package}` (or `pip install napari-medsynth[samples]`)"
        )
    return path


def load_sample(name: str, **read_options) -> MedImage:
    """Read sample `name` (see `SAMPLES`) with `medsynth.io.read_image`."""
    from medsynth.io import read_image

    image = read_image(sample_path(name), **read_options)
    image.name = name
    return image


def _get(name: str) -> Sample:
    if name not in SAMPLES:
        raise InputError(f"unknown sample {name!r}; choose one of {', '.join(SAMPLES)}")
    return SAMPLES[name]


def _locate(sample: Sample) -> Path | None:
    if sample.package == "nilearn":
        # The template ships inside nilearn; finding it without importing nilearn spares scikit-learn.
        spec = importlib.util.find_spec("nilearn")
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(spec.submodule_search_locations[0], "datasets", "data", sample.file)
    from pydicom.data import get_testdata_file

    found = get_testdata_file(sample.file, download=False)
    return Path(found) if found else None
