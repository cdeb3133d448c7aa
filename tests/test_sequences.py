"""Sequence generation from a hrgan-dtcr checkpoint trained on the real ultrasound cine."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import medsynth.training.recipes.hrgan_dtcr  # noqa: F401 - registers the recipe
from medsynth.data.samples import load_sample
from medsynth.errors import InputError
from medsynth.io import read_image, write_nifti
from medsynth.training.checkpoint import load_checkpoint
from medsynth.training.config import TrainConfig
from medsynth.training.sequences import (
    SequenceProgress,
    frame_time,
    generate_sequences,
    iter_sequences,
)
from medsynth.training.trainer import train

pytestmark = pytest.mark.slow

SETTINGS = {"resolution": 32, "base_resolution": 16, "frames": 4, "batch_size": 2, "g_channels": 4, "d_channels": 4,
            "content_dim": 8, "motion_dim": 4, "stage_steps": 1, "fade_steps": 1, "dtcr_features": "discriminator"}  # fmt: skip


@pytest.fixture(scope="module")
def cine():
    image = load_sample("us_cine")
    return image.with_array(image.array[:16, ::8, ::8].copy(), spacing=tuple(8 * s for s in image.spacing))


@pytest.fixture(scope="module")
def checkpoint(cine, tmp_path_factory):
    """A checkpoint grown to its last stage (32 px) by the trainer on 60 x 80 frames of the cine."""
    config = TrainConfig(recipe="hrgan-dtcr", out_dir=tmp_path_factory.mktemp("run"), steps=3, device="cpu",
                         sample_every=0, settings=SETTINGS)  # fmt: skip
    finished = list(train(config, [cine]))[-1]
    return load_checkpoint(finished.checkpoint)


def test_one_sequence_is_tyx_in_data_units_with_geometry_and_provenance(checkpoint, cine):
    image = generate_sequences(checkpoint, 1, seed=3, device="cpu")
    assert image.axes == "tyx" and image.array.shape == (4, 32, 32)
    low, high = checkpoint.normalization.low, checkpoint.normalization.high
    assert low <= image.array.min() < image.array.max() <= high
    assert high > 100  # data units of the cine (0..210), not [-1, 1]
    # 80 px wide frames were fitted into 32 px: the spacing grows by 80 / 32.
    assert image.spacing == pytest.approx(tuple(s * 80 / 32 for s in cine.spacing))
    assert image.modality == "US"
    assert image.synthetic is not None and image.synthetic.seed == 3 and image.synthetic.model == "hrgan-dtcr"
    assert checkpoint.label in image.synthetic.checkpoint
    assert not np.allclose(image.array[0], image.array[1])


def test_frame_time_comes_from_the_training_data(checkpoint, cine):
    assert generate_sequences(checkpoint, 1, device="cpu").time_spacing == pytest.approx(cine.time_spacing)


def test_frame_time_is_the_median_of_the_training_images(checkpoint):
    data = {**checkpoint.data, "images": [{"time_spacing": 20.0}, {"time_spacing": 40.0}, {"time_spacing": None}]}
    assert frame_time(replace(checkpoint, data=data)) == pytest.approx(30.0)
    assert generate_sequences(replace(checkpoint, data=data), 1, device="cpu").time_spacing == pytest.approx(30.0)


def test_several_sequences_stack_on_a_slice_axis_and_repeat_with_the_seed(checkpoint):
    image = generate_sequences(checkpoint, 3, seed=1, frames=6, device="cpu")
    assert image.axes == "tzyx" and image.array.shape == (6, 3, 32, 32)
    assert image.metadata["sample_axis"] == 1 and image.spacing[0] == 1.0
    again = generate_sequences(checkpoint, 3, seed=1, frames=6, device="cpu")
    assert np.array_equal(image.array, again.array)
    other = generate_sequences(checkpoint, 3, seed=2, frames=6, device="cpu")
    assert not np.allclose(image.array, other.array)


def test_progress_counts_every_frame(checkpoint):
    run = iter_sequences(checkpoint, 2, frames=5, device="cpu")
    events = []
    with pytest.raises(StopIteration) as done:
        while True:
            events.append(next(run))
    assert all(isinstance(e, SequenceProgress) for e in events)
    assert events[-1] == SequenceProgress(10, 10)
    assert done.value.value.array.shape == (5, 2, 32, 32)


def test_tiled_high_resolution_equals_untiled(checkpoint):
    whole = generate_sequences(checkpoint, 1, seed=4, frames=2, resolution=256, device="cpu", tile=256)
    tiled = generate_sequences(checkpoint, 1, seed=4, frames=2, resolution=256, device="cpu", tile=64)
    assert whole.array.shape == (2, 256, 256)
    value_range = checkpoint.normalization.high - checkpoint.normalization.low
    assert np.abs(whole.array - tiled.array).max() < 1e-4 * value_range
    assert whole.spacing == pytest.approx(tuple(s * 32 / 256 for s in checkpoint.data["pixel_spacing"]))


def test_modality_changes_the_output_and_drops_the_units(checkpoint):
    us = generate_sequences(checkpoint, 1, seed=0, device="cpu")
    mr = generate_sequences(checkpoint, 1, seed=0, modality="MR", device="cpu")
    assert mr.modality == "MR" and not np.allclose(us.array, mr.array)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"resolution": 44}, "multiple of 8"),
        ({"resolution": 16}, "at least 32"),
        ({"tile": 12}, "multiple of 8"),
        ({"modality": "XX"}, "not one of"),
        ({"frames": 0}, "at least 1"),
    ],
)
def test_bad_requests_are_refused(checkpoint, options, message):
    with pytest.raises(InputError, match=message):
        generate_sequences(checkpoint, 1, device="cpu", **options)


def test_sequences_save_as_synthetic_4d_nifti(checkpoint, tmp_path):
    image = generate_sequences(checkpoint, 2, frames=3, device="cpu")
    path = write_nifti(image, tmp_path / "synthetic.nii.gz")
    back = read_image(path)
    assert back.has_time and back.array.shape == image.array.shape
    assert back.synthetic is not None
    assert np.allclose(back.array, image.array, atol=1e-3 * checkpoint.normalization.high)


def test_2d_checkpoints_are_sent_to_generate(cine, tmp_path):
    frame = cine.with_array(cine.array[0], axes="yx")
    config = TrainConfig(recipe="dcgan", out_dir=tmp_path, steps=1, device="cpu", sample_every=0,
                         settings={"resolution": 64, "batch_size": 2, "latent_dim": 8, "g_channels": 4, "d_channels": 4})  # fmt: skip
    finished = list(train(config, [frame]))[-1]
    with pytest.raises(InputError, match="medsynth generate"):
        generate_sequences(finished.checkpoint, 1, device="cpu")


def test_cli_generate_writes_sequences_as_4d_nifti_and_dicom_cines(checkpoint, tmp_path):
    import pydicom

    from medsynth.cli import main

    out = tmp_path / "sequences.nii.gz"
    args = ["generate", str(checkpoint.path), "--num", "2", "--frames", "6", "--seed", "1", "--device", "cpu"]
    assert main([*args, "--out", str(out)]) == 0
    image = read_image(out)
    assert image.axes == "tzyx" and image.array.shape == (6, 2, 32, 32)
    assert image.synthetic is not None and image.time_spacing == pytest.approx(frame_time(checkpoint))
    # Written a block of frames at a time, the file holds exactly what one in-memory generation makes.
    whole = generate_sequences(checkpoint, 2, seed=1, frames=6, device="cpu")
    assert np.array_equal(np.asarray(image.array), whole.array)
    assert main(["generate", str(checkpoint.path), "-n", "1", "--frames", "5", "--out", str(tmp_path / "one.nii")]) == 0
    one = read_image(tmp_path / "one.nii")
    assert np.array_equal(np.asarray(one.array), generate_sequences(checkpoint, 1, frames=5, device="cpu").array)
    assert main([*args, "--out", str(tmp_path / "dicom")]) == 0
    files = sorted((tmp_path / "dicom").glob("*.dcm"))
    assert len(files) == 2
    cine = pydicom.dcmread(files[0])
    assert int(cine.NumberOfFrames) == 6 and cine.SyntheticData == "YES"


def test_generate_writes_a_sequence_to_nifti_that_reads_back_with_its_time_axis(checkpoint, cine, tmp_path):
    import nibabel as nib

    from medsynth.cli import main

    path = tmp_path / "synthetic_cine.nii.gz"
    assert main(["generate", str(checkpoint.path), "-n", "1", "--seed", "2", "--out", str(path)]) == 0
    stored = nib.load(path)
    assert stored.shape == (32, 32, 1, 4)
    assert stored.header.get_xyzt_units() == ("mm", "msec")
    assert stored.header.get_zooms()[3] == pytest.approx(cine.time_spacing, rel=1e-5)
    back = read_image(path)
    assert back.axes == "tyx" and back.array.shape == (4, 32, 32)
    assert back.time_spacing == pytest.approx(cine.time_spacing, rel=1e-5)
    np.testing.assert_allclose(back.array, generate_sequences(checkpoint, 1, seed=2, device="cpu").array, rtol=1e-6)
