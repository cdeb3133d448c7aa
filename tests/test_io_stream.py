"""`medsynth.io.stream`: NIfTI files written block by block (MNI152 slices, the cine)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medsynth.data.samples import load_sample
from medsynth.errors import InputError
from medsynth.io import MedImage, SyntheticProvenance, read_image, write_nifti
from medsynth.io.stream import NIFTI1_MAX_DIM, nifti_stream

PROVENANCE = SyntheticProvenance("test-stream", "0", checkpoint="ckpt sha256:0", seed=3)


@pytest.fixture(scope="module")
def slices():
    """12 axial MNI152 slices as a synthetic zyx image."""
    mni = load_sample("mni152")
    return mni.with_array(np.asarray(mni.array[80:92], dtype=np.float32), synthetic=PROVENANCE)


@pytest.fixture(scope="module")
def sequences():
    """Three 5-frame clips of the cine stacked as tzyx (T, N, H, W), as generated sequences are."""
    cine = load_sample("us_cine")
    frames = np.asarray(cine.array[:15, ::4, ::4], dtype=np.float32)
    if frames.ndim == 4:
        frames = frames.mean(axis=-1)
    stacked = np.ascontiguousarray(frames.reshape(3, 5, *frames.shape[1:]).transpose(1, 0, 2, 3))
    spacing = (1.0, *(4 * s for s in cine.spacing))
    return MedImage(stacked, "tzyx", spacing, time_spacing=cine.time_spacing, modality="US", synthetic=PROVENANCE)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("order", ["forward", "reversed"])
def test_blocks_written_in_any_order_give_write_niftis_file(slices, tmp_path, suffix, order):
    reference = write_nifti(slices, tmp_path / f"reference{suffix}")
    starts = list(range(0, 12, 5))
    with nifti_stream(tmp_path / f"streamed{suffix}", slices.with_array(slices.array[:1]), slices.array.shape) as out:
        for start in starts if order == "forward" else starts[::-1]:
            out.write((start,), slices.array[start : start + 5])
    streamed = nib.load(tmp_path / f"streamed{suffix}")
    assert streamed.header.binaryblock == nib.load(reference).header.binaryblock
    np.testing.assert_array_equal(np.asarray(streamed.dataobj), np.asarray(nib.load(reference).dataobj))
    assert read_image(tmp_path / f"streamed{suffix}").synthetic == PROVENANCE
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([reference.name, f"streamed{suffix}"])


def test_sequences_written_one_at_a_time_fill_the_time_major_file(sequences, tmp_path):
    reference = write_nifti(sequences, tmp_path / "reference.nii.gz")
    like = sequences.with_array(sequences.array[:1, :1])
    with nifti_stream(tmp_path / "streamed.nii.gz", like, sequences.array.shape) as out:
        for i in range(3):
            for start in (0, 3):  # frames arrive in batches, sequence by sequence
                out.write((start, i), sequences.array[start : start + 3, i : i + 1])
    assert nib.load(tmp_path / "streamed.nii.gz").header.binaryblock == nib.load(reference).header.binaryblock
    np.testing.assert_array_equal(read_image(tmp_path / "streamed.nii.gz").array, read_image(reference).array)


def test_more_planes_than_nifti1_holds_make_a_nifti2_file(tmp_path):
    plane = np.asarray(load_sample("ct_slice").array[60:64, 60:66], dtype=np.float32)
    n = NIFTI1_MAX_DIM + 10
    stack = np.broadcast_to(plane, (n, *plane.shape)) + np.arange(n, dtype=np.float32)[:, None, None]
    like = MedImage(stack[:1], "zyx", (1.0, 0.5, 0.5), modality="CT", units="HU")
    with nifti_stream(tmp_path / "many.nii.gz", like, stack.shape) as out:
        out.write((0,), stack[:20000])
        out.write((20000,), stack[20000:])
    stored = nib.load(tmp_path / "many.nii.gz")
    assert isinstance(stored, nib.Nifti2Image) and stored.shape == (6, 4, n)
    np.testing.assert_array_equal(read_image(tmp_path / "many.nii.gz").array, stack)


@pytest.mark.parametrize(
    ("fail", "error", "message"),
    [
        ("missing", ValueError, "of 12 planes were written"),
        ("nan", InputError, "NaN or infinite"),
        ("raise", RuntimeError, "generator failed"),
    ],
)
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_stream_that_fails_leaves_nothing_behind(slices, tmp_path, fail, error, message, suffix):
    with pytest.raises(error, match=message):
        with nifti_stream(tmp_path / f"out{suffix}", slices.with_array(slices.array[:1]), slices.array.shape) as out:
            out.write((0,), slices.array[:6])
            if fail == "nan":
                out.write((6,), np.full((6, *slices.array.shape[1:]), np.nan, dtype=np.float32))
            elif fail == "raise":
                raise RuntimeError("generator failed")
    assert list(tmp_path.iterdir()) == []

