"""SinGAN on real crops: the `singan` engine recipe (MNI152 slices) and the lesion workflow on it (CT in HU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save as save_tensors

from medsynth.data.geometry import image_plane, label_box, rectangle_box
from medsynth.data.samples import load_sample
from medsynth.errors import CheckpointError, InputError, SettingsError
from medsynth.lesions.crop import lesion_crop
from medsynth.lesions.singan_training import (
    SinGANRunOptions,
    SinGANSettings,
    crop_tensor,
    load_singan,
    pyramid_shapes,
    sample_lesions,
    train_singan,
)
from medsynth.metrics.swd import swd
from medsynth.settings import describe
from medsynth.training import events
from medsynth.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from medsynth.training.config import TrainConfig
from medsynth.training.control import TrainControl
from medsynth.training.generate import generate
from medsynth.training.recipe import TARGET_DATA_KINDS, list_recipes
from medsynth.training.trainer import check_config, train

TINY = SinGANSettings(min_size=17, scale_factor=0.6, iterations=40, width=16)
EVERY_10 = SinGANRunOptions(log_every=10)
ENGINE_TINY = {"min_size": 17, "scale_factor": 0.6, "iterations": 4, "width": 8, "layers": 3, "d_steps": 1, "g_steps": 1}


@pytest.fixture(scope="module")
def crop() -> tuple[np.ndarray, np.ndarray]:
    plane = np.asarray(load_sample("ct_slice").array, dtype=np.float32)
    return lesion_crop(plane, (40, 40, 64, 64))  # 24x24 px of vertebra and soft tissue, in HU


@pytest.fixture(scope="module")
def mni_lesion():
    """Eight axial MNI152 slices and a lesion-like mask: dark tissue of a 16x16 window thresholded in slice 5.

    Slice 2 holds a smaller part of the mask, so the crop must come from slice 5.
    """
    image = load_sample("mni152")
    volume = np.asarray(image.array[86:94], dtype=np.float32)
    mask = np.zeros(volume.shape, dtype=np.uint8)
    window = volume[5, 100:116, 84:100]
    mask[5, 100:116, 84:100] = window < np.median(window)
    mask[2, 100:104, 84:88] = 1
    return image.with_array(volume), mask


def engine_config(out_dir, **options) -> TrainConfig:
    settings = dict(ENGINE_TINY, **options.pop("settings", {}))
    defaults = {"log_every": 1, "sample_every": 4, "checkpoint_every": 6, "preview_samples": 3, "steps": 5}
    return TrainConfig(recipe="singan", out_dir=out_dir, settings=settings, **{**defaults, **options})


@pytest.fixture(scope="module")
def straight(tmp_path_factory, mni_lesion):
    """Events of an uninterrupted engine run: 3 scales x 4 steps, checkpoints at steps 6 and 12."""
    return list(train(engine_config(tmp_path_factory.mktemp("straight")), [mni_lesion]))


def _run(generator):
    events_seen = []
    while True:
        try:
            events_seen.append(next(generator))
        except StopIteration as done:
            return events_seen, done.value


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
    # A napari Shapes rectangle on a 3D layer: vertices (z, y, x); it holds the pixels whose centres it covers.
    vertices = np.array([[1, 10.2, 20.7], [1, 10.2, 40.1], [1, 33.9, 40.1], [1, 33.9, 20.7]])
    assert rectangle_box(vertices, plane.shape) == (11, 21, 34, 41)
    values, mask = lesion_crop(plane, rectangle_box(vertices, plane.shape))
    assert values.shape == mask.shape == (23, 20) and mask[11, 10] and not mask[0, 0]
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


def test_recipe_is_listed_with_its_settings():
    info = {r.name: r for r in list_recipes()}["singan"]
    assert info.data_kind == "lesion" and info.data_kind in TARGET_DATA_KINDS
    names = {s.name for s in describe(info.settings_cls)}
    assert {"scale_factor", "min_size", "iterations", "rec_weight", "noise_amp_init", "margin"} <= names
    assert not names & {"seed", "log_every", "resolution"}  # run options come from TrainConfig


def test_engine_trains_scale_by_scale_on_the_lesion_crop_of_a_volume(straight, mni_lesion):
    image, mask = mni_lesion
    assert isinstance(straight[0], events.Started) and straight[0].recipe == "singan"
    # config.steps (5) is ignored: the run is 3 scales x 4 iterations of the 32x32 crop.
    assert straight[0].total_steps == 12 and straight[-1].step == 12 and straight[-1].reason == "completed"
    progress = [e for e in straight if isinstance(e, events.Progress)]
    assert [p.step for p in progress] == list(range(1, 13))
    assert [p.phase for p in progress] == ["scale 1/3"] * 4 + ["scale 2/3"] * 4 + ["scale 3/3"] * 4
    assert all(set(p.losses) == {"d_loss", "wasserstein", "gp", "g_adv", "rec"} for p in progress)

    ckpt = load_checkpoint(straight[-1].checkpoint)
    rows, cols = np.nonzero(mask[5])
    box = [rows.min() - 8, cols.min() - 8, rows.max() + 9, cols.max() + 9]  # the mask's box plus the margin
    assert ckpt.data["slice_index"] == 5 and ckpt.data["box"] == box
    crop = np.asarray(image.array[5, box[0] : box[2], box[1] : box[3]], dtype=np.float32)
    assert ckpt.data["item_shape"] == [2, *crop.shape] and ckpt.data["pixel_spacing"] == [1.0, 1.0]
    assert ckpt.normalization.method == "minmax"
    assert (ckpt.normalization.low, ckpt.normalization.high) == (crop.min(), crop.max())
    assert len(ckpt.state["pyramid"]["generators"]) == 3 and ckpt.state["models"] == {}

    samples = [e for e in straight if isinstance(e, events.Samples)]
    assert [s.step for s in samples] == [4, 8, 12]
    for s in samples:  # in the MR intensities of the crop (56 to 219 here, not [-1, 1]), at its size
        assert s.images.shape == (3, *crop.shape) and not np.allclose(s.images[0], s.images[1])
        assert crop.min() - 1e-3 <= s.images.min() and s.images.max() <= crop.max() + 1e-3

    generated = generate(straight[-1].checkpoint, 2, seed=3, device="cpu")
    assert generated.array.shape == (2, *crop.shape) and generated.spacing == (1.0, 1.0, 1.0)
    assert generated.synthetic is not None and generated.synthetic.model == "singan"
    assert crop.min() - 1e-3 <= generated.array.min() and generated.array.max() <= crop.max() + 1e-3


def test_resume_mid_scale_continues_exactly_like_a_straight_run(straight, mni_lesion, tmp_path):
    half = straight[-1].checkpoint.parent / "checkpoint-0000006.safetensors"
    assert load_checkpoint(half).state["scale"] == 1 and load_checkpoint(half).state["rounds"] == 2
    resumed = list(train(engine_config(tmp_path, resume=half), [mni_lesion]))
    assert resumed[0].start_step == 6 and resumed[-1].step == 12

    def losses(run):
        return {e.step: (e.losses, e.phase) for e in run if isinstance(e, events.Progress) and e.step > 6}

    assert losses(resumed) == losses(straight) and len(losses(resumed)) == 6
    expected, actual = load_checkpoint(straight[-1].checkpoint).state, load_checkpoint(resumed[-1].checkpoint).state
    for a, b in zip(expected["pyramid"]["generators"], actual["pyramid"]["generators"], strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert expected["pyramid"]["noise_amps"] == actual["pyramid"]["noise_amps"]


def test_engine_refuses_what_does_not_fit_a_lesion_crop(straight, mni_lesion, tmp_path):
    image, mask = mni_lesion
    with pytest.raises(InputError, match="one lesion crop"):
        next(train(engine_config(tmp_path / "two"), [mni_lesion, mni_lesion]))
    with pytest.raises(SettingsError, match="augment"):
        check_config(engine_config(tmp_path / "aug", augment=True))
    with pytest.raises(InputError, match="empty"):
        next(train(engine_config(tmp_path / "empty"), [(image, np.zeros_like(mask))]))
    with pytest.raises(InputError, match="grid"):
        next(train(engine_config(tmp_path / "grid"), [(image, mask[:, :-1])]))
    final = straight[-1].checkpoint
    with pytest.raises(SettingsError, match="nothing is left"):
        next(train(engine_config(tmp_path / "end", resume=final), [mni_lesion]))
    half = final.parent / "checkpoint-0000006.safetensors"
    moved = np.roll(mask, 3, axis=2)
    with pytest.raises(CheckpointError, match="another lesion crop"):
        next(train(engine_config(tmp_path / "other", resume=half), [(image, moved)]))
    with pytest.raises(CheckpointError, match="iterations"):
        next(train(engine_config(tmp_path / "longer", resume=half, settings={"iterations": 5}), [mni_lesion]))


def test_engine_checkpoint_is_a_lesion_model_with_start_scale_and_size(straight, mni_lesion):
    half = load_singan(straight[-1].checkpoint.parent / "checkpoint-0000006.safetensors")
    assert half.scales == 2  # mid-scale: the interrupted scale counts as trained
    model = load_singan(straight[-1].checkpoint)
    assert model.scales == 3 and model.step == 12 and model.settings.iterations == 4
    h, w = model.model.shapes[-1]
    lesions = sample_lesions(model, 2, seed=4, start_scale=1, size=1.5)
    assert all(l.values.shape == l.mask.shape == (round(h * 1.5), round(w * 1.5)) for l in lesions)
    low, high = model.normalization.low, model.normalization.high
    assert all(low - 1e-3 <= l.values.min() and l.values.max() <= high + 1e-3 for l in lesions)
    assert sample_lesions(model, 1, seed=4, start_scale=2)[0].values.shape == (h, w)
    with pytest.raises(InputError, match="between 0"):
        sample_lesions(model, 1, seed=4, start_scale=3)


@pytest.mark.slow
def test_tiny_singan_trains_reconstructs_samples_and_round_trips(crop, tmp_path):
    values, mask = crop
    seen, trained = _run(train_singan(values, mask, TINY, run=EVERY_10, checkpoint=tmp_path / "lesion.safetensors"))

    assert isinstance(seen[0], events.Started) and seen[0].recipe == "singan" and seen[0].total_steps == 80
    assert isinstance(seen[-1], events.Finished) and seen[-1].reason == "completed" and seen[-1].step == 80
    assert [type(e) for e in seen].count(events.Samples) == 2  # one preview per scale
    progress = [e for e in seen if isinstance(e, events.Progress)]
    assert {"d_loss", "gp", "g_adv", "rec"} <= set(progress[-1].losses) and "scale" not in progress[-1].losses
    assert progress[0].phase == "scale 1/2" and progress[-1].phase == "scale 2/2"
    assert progress[-1].losses["rec"] < progress[0].losses["rec"]
    saved = [e for e in seen if isinstance(e, events.CheckpointSaved)]
    assert len(saved) == 1 and saved[0].path == seen[-1].checkpoint == tmp_path / "lesion.safetensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lesion.safetensors"]

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
    # Realism in small (benchmarks/bench_lesions.py): the samples' patches are closer to the crop's
    # than those of random patches of the same slice, less than half as far by SWD.
    plane = np.asarray(load_sample("ct_slice").array, dtype=np.float32)
    samples = np.stack([l.values for l in sample_lesions(trained, 16, seed=11)])
    corners = np.random.default_rng(0).integers(0, plane.shape[0] - values.shape[0], size=(16, 2))
    patches = np.stack([plane[y : y + values.shape[0], x : x + values.shape[1]] for y, x in corners])
    assert swd(values[None], samples)["mean"] < 0.6 * swd(values[None], patches)["mean"]

    loaded = load_singan(seen[-1].checkpoint)
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
    settings, run = SinGANSettings(min_size=17, scale_factor=0.6, iterations=5, width=8), SinGANRunOptions(log_every=1)
    generator = train_singan(values, mask, settings, run=run, control=control, checkpoint=tmp_path / "stopped.safetensors")
    seen = []
    for event in generator:
        seen.append(event)
        if isinstance(event, events.Progress) and event.step == 2:
            control.request_stop()
    assert isinstance(seen[-1], events.Finished) and seen[-1].reason == "stopped" and seen[-1].step == 2
    stopped = load_singan(seen[-1].checkpoint)
    assert stopped.scales == 1 and sample_lesions(stopped, 1, seed=0)[0].values.shape == (24, 24)
    control = TrainControl()
    control.request_stop()  # before the first round: nothing is trained, and sampling says so
    seen, untrained = _run(train_singan(values, mask, settings, run=run, control=control, checkpoint=tmp_path / "none.safetensors"))
    assert seen[-1].step == 0 and untrained.scales == 0
    with pytest.raises(InputError, match="no trained scale"):
        sample_lesions(untrained, 1, seed=0)
    with pytest.raises(InputError, match="no trained scale"):
        generate(seen[-1].checkpoint, 1, device="cpu")

    with pytest.raises(InputError, match="empty"):
        next(train_singan(values, np.zeros_like(mask)))
    with pytest.raises(InputError, match="constant"):
        next(train_singan(np.ones_like(values), mask))
    with pytest.raises(InputError, match="at least"):
        next(train_singan(values[:5, :5], mask[:5, :5]))
    with pytest.raises(InputError, match=r"\.safetensors"):
        next(train_singan(values, mask, checkpoint=tmp_path / "lesion.pt"))


def test_foreign_and_former_format_files_are_refused(tmp_path, straight):
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a medsynth checkpoint"):
        load_singan(tmp_path / "bad.safetensors")
    # A file of the former SinGAN loop: its own header key, no engine metadata.
    old = save_tensors({"z_star": torch.zeros(1, 2, 16, 16)}, metadata={"medsynth_singan": json.dumps({"recipe": "singan"})})
    (tmp_path / "old.safetensors").write_bytes(old)
    with pytest.raises(CheckpointError, match="medsynth_singan.*train the SinGAN again"):
        load_singan(tmp_path / "old.safetensors")
    other = load_checkpoint(straight[-1].checkpoint)
    dcgan = Checkpoint("dcgan", {}, 1, other.normalization, other.data, {"models": {}})
    save_checkpoint(dcgan, tmp_path / "dcgan.safetensors")
    with pytest.raises(CheckpointError, match="recipe 'dcgan', not 'singan'"):
        load_singan(tmp_path / "dcgan.safetensors")


@pytest.fixture(scope="module")
def concurrent(tmp_path_factory, mni_lesion):
    """Events of an uninterrupted ConSinGAN-style run: 3 scales x 4 steps, all 3 trained together at the last."""
    config = engine_config(tmp_path_factory.mktemp("concurrent"), checkpoint_every=5, settings={"concurrent_scales": 3})
    return list(train(config, [mni_lesion]))


def test_concurrent_scales_train_the_lower_generators_at_scaled_rates(concurrent, straight):
    assert concurrent[-1].reason == "completed" and concurrent[-1].step == 12
    folder = concurrent[-1].checkpoint.parent
    mid = load_checkpoint(folder / "checkpoint-0000010.safetensors").state
    assert (mid["scale"], mid["rounds"], mid["concurrent_scales"]) == (2, 2, 3)
    groups = mid["optimizers"]["generator"]["param_groups"]
    assert [g["lr"] for g in groups] == pytest.approx([5e-4, 5e-5, 5e-6])  # newest first, x lr_scale per scale below
    per_generator = len(mid["models"]["generator"]) - 2 * 3  # its batch norms' running mean and var and counter
    assert all(len(g["params"]) == per_generator for g in groups)
    early = load_checkpoint(folder / "checkpoint-0000005.safetensors").state["pyramid"]["generators"][0]
    final = load_checkpoint(concurrent[-1].checkpoint).state["pyramid"]["generators"]
    assert not torch.equal(early["body.0.0.weight"], final[0]["body.0.0.weight"])  # scale 1 kept training
    # Classic SinGAN freezes a scale when it is done.
    classic_early = load_checkpoint(straight[-1].checkpoint.parent / "checkpoint-0000006.safetensors").state
    classic_final = load_checkpoint(straight[-1].checkpoint).state["pyramid"]["generators"]
    assert torch.equal(classic_early["pyramid"]["generators"][0]["body.0.0.weight"], classic_final[0]["body.0.0.weight"])
    assert len(classic_early["optimizers"]["generator"]["param_groups"]) == 1


def test_concurrent_resume_mid_scale_continues_exactly_and_samples(concurrent, mni_lesion, tmp_path):
    mid = concurrent[-1].checkpoint.parent / "checkpoint-0000010.safetensors"
    config = engine_config(tmp_path, checkpoint_every=5, resume=mid, settings={"concurrent_scales": 3})
    resumed = list(train(config, [mni_lesion]))
    assert resumed[0].start_step == 10 and resumed[-1].step == 12

    def losses(run):
        return {e.step: e.losses for e in run if isinstance(e, events.Progress) and e.step > 10}

    assert losses(resumed) == losses(concurrent) and len(losses(resumed)) == 2
    expected, actual = load_checkpoint(concurrent[-1].checkpoint).state, load_checkpoint(resumed[-1].checkpoint).state
    for a, b in zip(expected["pyramid"]["generators"], actual["pyramid"]["generators"], strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)  # the lower generators' updates resumed exactly too
    with pytest.raises(CheckpointError, match="concurrent_scales"):
        classic = {"concurrent_scales": 1}  # a resume takes the checkpoint's settings unless told otherwise
        next(train(engine_config(tmp_path / "classic", resume=mid, checkpoint_every=5, settings=classic), [mni_lesion]))

    half = load_singan(mid)
    assert half.scales == 3 and half.settings.concurrent_scales == 3
    model = load_singan(concurrent[-1].checkpoint)
    h, w = model.model.shapes[-1]
    lesions = sample_lesions(model, 2, seed=4, start_scale=1, size=1.5)
    assert all(l.values.shape == l.mask.shape == (round(h * 1.5), round(w * 1.5)) for l in lesions)
    assert not np.allclose(lesions[0].values, lesions[1].values)
    low, high = model.normalization.low, model.normalization.high
    assert all(low - 1e-3 <= l.values.min() and l.values.max() <= high + 1e-3 for l in lesions)


@pytest.mark.parametrize("layers", [3, 8])
def test_the_smallest_allowed_min_size_trains_with_any_allowed_depth(tmp_path, mni_lesion, layers):
    info = {s.name: s for s in describe(SinGANSettings)}
    smallest = int(info["min_size"].min)
    assert layers in (info["layers"].min, info["layers"].max)
    settings = {"min_size": smallest, "layers": layers, "iterations": 1, "width": 4}
    got = list(train(engine_config(tmp_path, settings=settings, sample_every=0), [mni_lesion]))
    assert got[-1].reason == "completed" and load_checkpoint(got[-1].checkpoint).settings["min_size"] == smallest
    with pytest.raises(SettingsError, match=f"min_size={smallest - 1}: must be at least {smallest}"):
        check_config(engine_config(tmp_path / "below", settings={"min_size": smallest - 1}))


def test_a_crop_smaller_than_the_critics_patch_is_refused_naming_the_fix(tmp_path, mni_lesion):
    image, mask = mni_lesion
    tiny = np.zeros_like(mask)
    tiny[5, 100:106, 84:90] = 1  # 6x6 px of lesion; margin 2 gives a 10x10 crop, the 8-layer critic sees 17 px
    config = engine_config(tmp_path, settings={"layers": 8, "margin": 2})
    with pytest.raises(InputError, match="10x10 px, smaller than the 17 px patch a 8-layer critic sees"):
        list(train(config, [(image, tiny)]))
    assert not tmp_path.exists() or not list(tmp_path.iterdir())
