"""The trainer on real data (MNI152 axial slices): both baselines, reproducibility, resume, guards, control."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch

from medsynth.errors import SettingsError, TrainingError
from medsynth.io import read_image
from medsynth.training import events
from medsynth.training.checkpoint import load_checkpoint
from medsynth.training.config import TrainConfig
from medsynth.training.control import TrainControl
from medsynth.training.device import select_device
from medsynth.training.generate import generate
from medsynth.training.trainer import check_config, train

TINY = {"batch_size": 4, "g_channels": 8, "d_channels": 8, "latent_dim": 16}
LOSSES = {
    "dcgan": {"d_loss", "d_loss_real", "d_loss_fake", "g_loss"},
    "wgan-gp": {"critic_loss", "wasserstein", "gp", "g_loss"},
}


@pytest.fixture(scope="module")
def mni():
    """The MNI152 template's central 80 axial slices (the rest are mostly skipped as empty anyway)."""
    from medsynth.data.samples import sample_path

    image = read_image(sample_path("mni152"))
    return image.with_array(image.array[40:120])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mni):
    """Events of one 4-step run per baseline, checkpoints at steps 2 and 4."""
    return {
        recipe: list(train(tiny_config(tmp_path_factory.mktemp(recipe), recipe), [mni]))
        for recipe in ("dcgan", "wgan-gp")
    }


def tiny_config(out_dir, recipe="dcgan", steps=4, **options) -> TrainConfig:
    settings = dict(TINY, **({"n_critic": 2} if recipe == "wgan-gp" else {}), **options.pop("settings", {}))
    defaults = {"log_every": 1, "sample_every": 2, "checkpoint_every": 2, "preview_samples": 3}
    return TrainConfig(recipe=recipe, out_dir=out_dir, steps=steps, settings=settings, **{**defaults, **options})


@pytest.mark.parametrize("recipe", ["dcgan", "wgan-gp"])
def test_baseline_trains_on_mni_axial_slices(runs, recipe):
    got = runs[recipe]
    assert isinstance(got[0], events.Started) and got[0].device == "cpu" and got[0].start_step == 0
    assert isinstance(got[-1], events.Finished) and got[-1].reason == "completed" and got[-1].step == 4
    progress = [e for e in got if isinstance(e, events.Progress)]
    assert [p.step for p in progress] == [1, 2, 3, 4]
    assert all(set(p.losses) == LOSSES[recipe] and all(map(math.isfinite, p.losses.values())) for p in progress)
    assert progress[0].learning_rates["lr_generator"] > 0 and progress[-1].images_per_s > 0
    assert progress[-1].eta_s == 0 and progress[0].eta_s > 0
    samples = [e for e in got if isinstance(e, events.Samples)]
    assert [s.step for s in samples] == [2, 4]
    ckpt = load_checkpoint(got[-1].checkpoint)
    for s in samples:
        assert s.images.shape == (3, 64, 64)
        # EMA samples come back in MR intensity units: inside the clip range, not in [-1, 1].
        assert s.images.min() >= ckpt.normalization.low and s.images.max() <= ckpt.normalization.high
        assert s.images.max() > 1.5 and s.spacing == pytest.approx((233 / 64, 233 / 64))
    saved = [e.step for e in got if isinstance(e, events.CheckpointSaved)]
    assert saved == [2, 4] and ckpt.step == 4 and ckpt.recipe == recipe
    out_dir = got[-1].checkpoint.parent
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "checkpoint-0000002.safetensors",
        "checkpoint-0000004.safetensors",
        "medsynth-run.json",
    ]


def _progress_losses(config, data):
    return [e.losses for e in train(config, data) if isinstance(e, events.Progress)]


def test_same_seed_gives_identical_losses(tmp_path, mni, runs):
    first = [e.losses for e in runs["dcgan"] if isinstance(e, events.Progress)][:3]
    again = _progress_losses(tiny_config(tmp_path / "again", steps=3), [mni])
    other = _progress_losses(tiny_config(tmp_path / "other", steps=3, seed=8), [mni])
    assert first == again
    assert first != other


@pytest.mark.parametrize("recipe", ["dcgan", "wgan-gp"])
def test_resume_continues_exactly_like_a_straight_run(tmp_path, mni, runs, recipe):
    # A run's step-2 checkpoint is what a 2-step run ends with: the batches and noise of a step
    # depend only on (seed, step).
    straight = runs[recipe][-1].checkpoint
    half = straight.parent / "checkpoint-0000002.safetensors"
    resumed_events = list(train(tiny_config(tmp_path / "resumed", recipe, steps=4, resume=half), [mni]))
    assert resumed_events[0].start_step == 2
    resumed = load_checkpoint(resumed_events[-1].checkpoint)
    reference = load_checkpoint(straight)
    assert resumed.step == reference.step == 4

    def leaves(tree, prefix=""):
        if isinstance(tree, dict):
            for key, value in tree.items():
                yield from leaves(value, f"{prefix}/{key}")
        elif isinstance(tree, list):
            for i, value in enumerate(tree):
                yield from leaves(value, f"{prefix}/{i}")
        else:
            yield prefix, tree

    expected, actual = dict(leaves(reference.state)), dict(leaves(resumed.state))
    assert expected.keys() == actual.keys() and any("optimizers" in k for k in expected)
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, actual[key]), key
        else:
            assert value == actual[key], key


def test_bad_settings_are_rejected_before_training_naming_each_key(tmp_path, mni):
    config = tiny_config(tmp_path / "out", settings={"bogus": 1, "lr_g": "fast", "resolution": 100})
    with pytest.raises(SettingsError) as excinfo:
        check_config(config)
    message = str(excinfo.value)
    assert "'bogus'" in message and "lr_g" in message and "resolution" in message
    with pytest.raises(SettingsError):
        next(train(config, [mni]))
    assert not (tmp_path / "out").exists()
    with pytest.raises(SettingsError, match="unknown recipe 'stylegan9'.*dcgan"):
        check_config(TrainConfig(recipe="stylegan9", out_dir=tmp_path))
    with pytest.raises(SettingsError, match="log_every.*slice_axis"):
        check_config(TrainConfig(recipe="dcgan", out_dir=tmp_path, slice_axis=4, log_every=0))


def test_nan_loss_stops_training_and_keeps_only_good_checkpoints(tmp_path, mni, monkeypatch):
    import medsynth.training.recipes.dcgan as dcgan

    bce = dcgan.F.binary_cross_entropy_with_logits
    calls = {"n": 0}

    def poisoned(logits, target):
        calls["n"] += 1
        loss = bce(logits, target)
        return loss * float("nan") if calls["n"] > 6 else loss  # 3 BCE calls per step: NaN from step 3

    monkeypatch.setattr(dcgan.F, "binary_cross_entropy_with_logits", poisoned)
    seen = []
    with pytest.raises(TrainingError, match="not finite") as excinfo:
        for event in train(tiny_config(tmp_path), [mni]):
            seen.append(event)
    assert "discriminator" in str(excinfo.value)
    assert [e.step for e in seen if isinstance(e, events.CheckpointSaved)] == [2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-0000002.safetensors", "medsynth-run.json"]
    good = load_checkpoint(tmp_path / "checkpoint-0000002.safetensors")
    assert all(torch.isfinite(t).all() for t in good.state["models"]["generator"].values() if t.is_floating_point())


def test_non_finite_reported_loss_is_refused(tmp_path, mni, monkeypatch):
    from medsynth.training.recipes.dcgan import DCGANRecipe

    monkeypatch.setattr(DCGANRecipe, "train_step", lambda self, batch, step: {"g_loss": float("inf")})
    with pytest.raises(TrainingError, match="step 1: loss g_loss=inf is not finite"):
        list(train(tiny_config(tmp_path), [mni]))
    assert list(tmp_path.glob("*.safetensors")) == []


def test_stop_and_pause_are_honoured_within_one_step(tmp_path, mni):
    control = TrainControl()
    got = []
    for event in train(tiny_config(tmp_path, steps=50, checkpoint_every=100, sample_every=0), [mni], control):
        got.append(event)
        if isinstance(event, events.Progress) and event.step == 1:
            control.pause()
            threading.Timer(0.2, control.resume).start()
        if isinstance(event, events.Progress) and event.step == 3:
            control.request_stop()
    kinds = [type(e).__name__ for e in got]
    assert kinds[:4] == ["Started", "Progress", "Paused", "Resumed"] and got[2].step == got[3].step == 1
    assert kinds[-3:] == ["Progress", "CheckpointSaved", "Finished"]
    assert got[-1].reason == "stopped" and got[-1].step == 3 and got[-2].step == 3
    assert load_checkpoint(got[-1].checkpoint).step == 3


def test_generate_returns_data_units_spacing_and_provenance(runs, mni):
    path = runs["dcgan"][-1].checkpoint
    image = generate(path, 5, seed=3)
    ckpt = load_checkpoint(path)
    assert image.array.shape == (5, 64, 64) and image.axes == "zyx" and image.metadata["sample_axis"] == 0
    assert image.spacing == pytest.approx((1.0, 233 / 64, 233 / 64))
    assert image.modality == mni.modality and image.units == mni.units
    assert ckpt.normalization.low <= image.array.min() and image.array.max() <= ckpt.normalization.high
    assert image.synthetic.model == "dcgan" and image.synthetic.seed == 3
    assert image.synthetic.checkpoint.startswith("checkpoint-0000004.safetensors sha256:")
    np.testing.assert_array_equal(image.array, generate(ckpt, 5, seed=3).array)
    assert not np.array_equal(image.array, generate(ckpt, 5, seed=4).array)


def test_device_selection_falls_back_to_cpu_and_rejects_missing_devices():
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this test describes a machine without accelerators")
    assert select_device("auto") == torch.device("cpu")
    assert select_device("cpu") == torch.device("cpu")
    with pytest.raises(SettingsError, match="CUDA is not available"):
        select_device("cuda")
    with pytest.raises(SettingsError, match="not a torch device"):
        select_device("gpu please")


def test_generator_ema_ramps_its_decay_up():
    from torch import nn

    from medsynth.models.ema import EMA

    model = nn.Linear(2, 1, bias=False)
    ema = EMA(model, decay=0.999)
    with torch.no_grad():
        model.weight.fill_(1.0)
        ema.update()  # the first update copies the model
        assert torch.equal(ema.module.weight, model.weight)
        model.weight.fill_(2.0)
        ema.update()  # one earlier update: decay (1 + 1) / (10 + 1)
        torch.testing.assert_close(ema.module.weight, torch.full((1, 2), 1.0 + (1 - 2 / 11)))
        for _ in range(9000):  # (1 + n) / (10 + n) reaches 0.999 at n = 8991
            ema.update()
        model.weight.fill_(3.0)
        before = ema.module.weight.clone()
        ema.update()  # long runs use the full decay
        torch.testing.assert_close(ema.module.weight, before + 0.001 * (3.0 - before))


def test_one_phase_recipes_report_no_phase_and_train_the_configured_steps(runs):
    for got in runs.values():
        progress = [e for e in got if isinstance(e, events.Progress)]
        assert progress and all(p.phase == "" for p in progress)
        assert got[0].total_steps == 4 == progress[-1].total_steps  # config.steps, unlike singan's data-made schedule
