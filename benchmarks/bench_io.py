"""Whole-process cost of opening medical images with `medsynth.io.read` against plain pydicom/nibabel.

Three cases, each timed in a fresh Python process per repeat (interpreter start and imports included):

1. the 120-frame JPEG ultrasound cine of pydicom-data (``color3d_jpeg_baseline.dcm``), to grayscale;
   baseline: ``dcmread(...).pixel_array`` then BT.601 luminance, as plain pydicom code does it;
2. a 512x512x300 CT series written here with plain pydicom (int16 stored, Rescale Intercept -1024);
   baseline: ``dcmread`` every file, sort by Image Position (Patient), stack, rescale;
3. a ~1 GB uncompressed float32 4D NIfTI written here: peak resident memory (``ru_maxrss`` of the
   child, from ``os.wait4``) while reading it and touching every voxel, against the file size;
   baseline: ``nibabel.load(...).get_fdata()``.

Usage: ``python benchmarks/bench_io.py [--repeats 3] [--workdir DIR]``. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CT_SHAPE = (300, 512, 512)
NIFTI_SHAPE = (128, 128, 64, 256)  # x, y, z, t: 1.07 GB of float32

CINE_MEDSYNTH = """
import sys
from medsynth.io.read import read_image
image = read_image(sys.argv[1])
assert image.array.shape == (120, 480, 640), image.array.shape
"""

CINE_BASELINE = """
import sys
import numpy as np
import pydicom
frames = pydicom.dcmread(sys.argv[1]).pixel_array
gray = np.rint(frames @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
assert gray.shape == (120, 480, 640), gray.shape
"""

SERIES_MEDSYNTH = """
import sys
from medsynth.io.read import read_image
image = read_image(sys.argv[1])
assert image.array.shape == (300, 512, 512), image.array.shape
"""

SERIES_BASELINE = """
import sys
from pathlib import Path
import numpy as np
import pydicom
datasets = [pydicom.dcmread(p) for p in sorted(Path(sys.argv[1]).iterdir())]
datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
volume = np.stack([ds.pixel_array for ds in datasets]).astype(np.float32)
volume = volume * float(datasets[0].RescaleSlope) + float(datasets[0].RescaleIntercept)
assert volume.shape == (300, 512, 512), volume.shape
"""

NIFTI_MEDSYNTH = """
import sys
import numpy as np
from medsynth.io.read import read_image
image = read_image(sys.argv[1])
total = sum(float(image.array[t].sum(dtype=np.float64)) for t in range(image.array.shape[0]))
assert np.isfinite(total)
"""

NIFTI_BASELINE = """
import sys
import numpy as np
import nibabel as nib
data = nib.load(sys.argv[1]).get_fdata()
assert np.isfinite(data.sum())
"""


def run_child(code: str, argument: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of a fresh interpreter running `code`."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", code, str(argument)])
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"benchmark child failed with exit code {process.returncode}")
    return elapsed, usage.ru_maxrss / 1024  # Linux reports KiB


def write_ct_series(folder: Path) -> None:
    """A synthetic 512x512x300 axial CT series, 1 mm slices, written with plain pydicom."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    y, x = np.ogrid[: CT_SHAPE[1], : CT_SHAPE[2]]
    for k in range(CT_SHAPE[0]):
        body = ((y - 256) ** 2 + (x - 256) ** 2) < (200 - abs(k - 150) // 3) ** 2
        hu = np.where(body, 40, -1000) + rng.integers(-20, 20, size=CT_SHAPE[1:])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.PatientName = "CT", "BENCH", "Bench^Phantom"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SeriesDescription, ds.InstanceNumber = "bench CT", CT_SHAPE[0] - k  # reverse order on purpose
        ds.ImagePositionPatient = [-255.5, -255.5, float(k)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 1.0
        ds.Rows, ds.Columns = CT_SHAPE[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, -1024, "HU"
        ds.PixelData = (hu + 1024).astype(np.int16).tobytes()
        ds.save_as(folder / f"slice_{k:04d}.dcm", enforce_file_format=True)


def write_4d_nifti(path: Path) -> int:
    """An uncompressed float32 NIfTI of `NIFTI_SHAPE`, written volume by volume; returns its size."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(NIFTI_SHAPE)
    header.set_data_dtype(np.float32)
    header.set_zooms((2.0, 2.0, 2.0, 1000.0))
    header.set_xyzt_units("mm", "msec")
    affine = np.diag([-2.0, -2.0, 2.0, 1.0])
    header.set_sform(affine, code=1)
    header.set_qform(affine, code=1)
    header["vox_offset"] = 352
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        header.write_to(f)
        f.write(b"\x00" * (352 - f.tell()))
        for _ in range(NIFTI_SHAPE[3]):
            rng.standard_normal(NIFTI_SHAPE[:3], dtype=np.float32).tofile(f)
    return path.stat().st_size


def measure(code_ours: str, code_base: str, argument: Path, repeats: int) -> dict[str, list[tuple[float, float]]]:
    results: dict[str, list[tuple[float, float]]] = {"medsynth": [], "baseline": []}
    for _ in range(repeats):  # interleaved so that machine load affects both alike
        results["medsynth"].append(run_child(code_ours, argument))
        results["baseline"].append(run_child(code_base, argument))
    return results


def summarize(name: str, results: dict[str, list[tuple[float, float]]]) -> str:
    ours_t = statistics.median(t for t, _ in results["medsynth"])
    base_t = statistics.median(t for t, _ in results["baseline"])
    ours_m = max(m for _, m in results["medsynth"])
    base_m = max(m for _, m in results["baseline"])
    return (
        f"| {name} | {ours_t:.2f} s | {base_t:.2f} s | {base_t / ours_t:.2f}x | "
        f"{ours_m:.0f} MiB | {base_m:.0f} MiB |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the test data (temp dir)")
    args = parser.parse_args()
    from pydicom.data import get_testdata_file

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        cine = Path(get_testdata_file("color3d_jpeg_baseline.dcm"))
        series = work / "ct_series"
        write_ct_series(series)
        nifti = work / "dynamic.nii"
        size_mib = write_4d_nifti(nifti) / 2**20

        rows = [
            summarize("US cine, 120 JPEG frames -> gray", measure(CINE_MEDSYNTH, CINE_BASELINE, cine, args.repeats)),
            summarize("CT series 512x512x300", measure(SERIES_MEDSYNTH, SERIES_BASELINE, series, args.repeats)),
        ]
        nifti_results = measure(NIFTI_MEDSYNTH, NIFTI_BASELINE, nifti, args.repeats)
        rows.append(summarize(f"4D NIfTI {NIFTI_SHAPE}, read + touch all", nifti_results))

    print("| case | medsynth (median) | baseline (median) | speed-up | medsynth peak RSS | baseline peak RSS |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    ours_peak = max(m for _, m in nifti_results["medsynth"])
    base_peak = max(m for _, m in nifti_results["baseline"])
    print(
        f"\n4D NIfTI file: {size_mib:.0f} MiB; medsynth peak RSS {ours_peak:.0f} MiB = "
        f"{ours_peak / size_mib:.2f}x the file; baseline {base_peak / size_mib:.2f}x"
    )


if __name__ == "__main__":
    main()
