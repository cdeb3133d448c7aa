"""A tiny SinGAN on a real CT crop: trains scale by scale, reconstructs, samples in HU, saves and loads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsynth.data.samples import load_sample
from medsynth.errors import CheckpointError, InputError
from medsynth.lesions.crop import image_plane, label_box, lesion_crop, rectangle_box
from medsynth.lesions.singan_training import (
    SinGANSettings,
    crop_tensor,
    load_singan,
    pyramid_shapes,
    sample_lesions,
    train_singan,
)
from medsynth.training.control import TrainControl
from medsynth.training.events import CheckpointSaved, Finished, Progress, Samples, Started

TINY = SinGANSettings(min_size=16, scale_factor=0.6, iterations=40, width=16, log_every=10)


@pytest.fixture(scope="module")
def crop() -> tuple[np.ndarray, np.ndarray]:
    plane = np.asarray(load_sample("ct_slice").array, dtype=np.float32)
    return lesion_crop(plane, (40, 40, 64, 64))  # 24x24 px of vertebra and soft tissue, in HU


def _run(generator):
    events = []
    while True:
        try:
            events.append(next(generator))
        except StopIteration as done:
            return events, done.value


def test_crop_from_a_label_or_a_rectangle_in_a_slice_of_a_volume():
    plane = np.asarray(load_sample("ct_slice").array, dtype=np.float32)
    volume = np.stack([plane - 10, plane, plane + 10])
    labels = np.zeros(plane.shape, dtype=np.uint8)
    labels[50:61, 70:79] = 4
    labels[52, 79] = 4
    box = label_box(labels, 4, margin=2)
    assert box == (48, 68, 63, 82)
    values, mask = lesion_crop(image_plane(volume, 2), box, labels, 4)
    np.testing.assert_array_equal(values, plane[48:63, 68:82] + 10)
    assert mask.sum() == np.count_nonzero(labels == 4)
    # A napari Shapes rectangle on a 3D layer: vertices (z, y, x) in pixel coordinates.
    vertices = np.array([[1, 10.2, 20.7], [1, 10.2, 40.1], [1, 33.9, 40.1], [1, 33.9, 20.7]])
    assert rectangle_box(vertices, plane.shape) == (10, 20, 34, 41)
    values, mask = lesion_crop(plane, rectangle_box(vertices, plane.shape))
    assert values.shape == mask.shape == (24, 21) and mask[12, 10] and not mask[0, 0]
    with pytest.raises(InputError, match="label 5 is not in this plane"):
        label_box(labels, 5)
    with pytest.raises(InputError, match="slice index"):
        image_plane(volume, None)
    with pytest.raises(InputError, match="at least"):
        lesion_crop(plane, (0, 0, 4, 40))


def test_pyramid_reaches_min_size_with_a_recomputed_factor():
    assert pyramid_shapes(48, 48) == [(25, 25), (31, 31), (39, 39), (48, 48)]
    assert pyramid_shapes(24, 24, 0.6, 16) == [(16, 16), (24, 24)]
    shapes = pyramid_shapes(40, 100)
    assert min(shapes[0]) == 25 and shapes[-1] == (40, 100)
    assert pyramid_shapes(20, 30) == [(20, 30)]


@pytest.mark.slow
def test_tiny_singan_trains_reconstructs_samples_and_round_trips(crop, tmp_path):
    values, mask = crop
    events, trained = _run(train_singan(values, mask, TINY, checkpoint=tmp_path / "lesion.safetensors"))

    assert isinstance(events[0], Started) and events[0].recipe == "singan" and events[0].total_steps == 80
    assert isinstance(events[-1], Finished) and events[-1].reason == "completed" and events[-1].step == 80
    assert [type(e) for e in events].count(Samples) == 2  # one preview per scale
    progress = [e for e in events if isinstance(e, Progress)]
    assert {"d_loss", "gp", "g_adv", "rec"} <= set(progress[-1].losses)
    assert progress[-1].losses["rec"] < progress[0].losses["rec"]
    saved = [e for e in events if isinstance(e, CheckpointSaved)]
    assert saved and saved[0].path == events[-1].checkpoint and saved[0].path.is_file()

    model = trained.model
    assert trained.scales == 2 and model.noise_amps[0] == 1.0 and 0 < model.noise_amps[1] < 1
    real, _ = crop_tensor(values, mask)
    rec_rmse = float((model.reconstruct() - real).pow(2).mean().sqrt())
    noise_rmse = float((model.sample(4, torch.Generator().manual_seed(1)) - real).pow(2).mean().sqrt())
    assert rec_rmse < 0.75 * noise_rmse  # z* rebuilds the crop; fresh noise makes other images
    assert float((model.reconstruct() - real)[0, 0].pow(2).mean().sqrt()) < 0.25  # the image channel closely

    lesions = sample_lesions(trained, 3, seed=7, size=1.5)
    assert all(l.values.shape == (36, 36) and l.mask.shape == (36, 36) for l in lesions)
    for lesion in lesions:  # in HU, inside the crop's range (the min/max normalisation is inverted)
        assert values.min() - 1e-3 <= lesion.values.min() and lesion.values.max() <= values.max() + 1e-3
        assert lesion.values.std() > 10
    assert not np.allclose(lesions[0].values, lesions[1].values)
    assert sum(l.mask.any() for l in lesions) >= 2

    loaded = load_singan(events[-1].checkpoint)
    assert loaded.normalization == trained.normalization and loaded.model.noise_amps == model.noise_amps
    again = sample_lesions(loaded, 3, seed=7, size=1.5)
    for a, b in zip(lesions, again):
        np.testing.assert_allclose(a.values, b.values, atol=1e-3)
        np.testing.assert_array_equal(a.mask, b.mask)
    # Variability: starting fresh noise at the finest scale keeps the crop's layout.
    kept = sample_lesions(loaded, 1, seed=3, start_scale=1)[0]
    fresh = sample_lesions(loaded, 1, seed=3, start_scale=0)[0]
    assert np.corrcoef(kept.values.ravel(), values.ravel())[0, 1] > np.corrcoef(fresh.values.ravel(), values.ravel())[0, 1]


def test_stop_keeps_the_trained_scales_and_bad_input_is_refused(crop, tmp_path):
    values, mask = crop
    control = TrainControl()
    generator = train_singan(values, mask, SinGANSettings(min_size=16, scale_factor=0.6, iterations=5, width=8, log_every=1), control=control)
    events = []
    for event in generator:
        events.append(event)
        if isinstance(event, Progress) and event.step == 2:
            control.request_stop()
    assert isinstance(events[-1], Finished) and events[-1].reason == "stopped" and events[-1].step == 2

    with pytest.raises(InputError, match="empty"):
        next(train_singan(values, np.zeros_like(mask)))
    with pytest.raises(InputError, match="constant"):
        next(train_singan(np.ones_like(values), mask))
    with pytest.raises(InputError, match="at least"):
        next(train_singan(values[:5, :5], mask[:5, :5]))
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a medsynth SinGAN checkpoint"):
        load_singan(tmp_path / "bad.safetensors")
