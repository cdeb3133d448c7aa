"""The `vqgan-hdfb` and `vqgan` recipes through the trainer on real MNI152 slices: stages, losses, resume,
generation, reconstruction on the source grid, and the bad-input refusals every recipe has."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from medsynth.data.samples import load_sample
from medsynth.errors import CheckpointError, InputError, MissingWeightsError, SettingsError
from medsynth.settings import describe, parse
from medsynth.training.checkpoint import load_checkpoint
from medsynth.training.config import TrainConfig
from medsynth.training.events import Finished, Progress, Samples
from medsynth.training.gan_optimizer import GANOptimizerSettings
from medsynth.training.generate import generate
from medsynth.training.reconstruct import reconstruct
from medsynth.training.recipe import get_recipe, list_recipes
from medsynth.training.recipes.vqgan import HDFBSettings, VQGANRecipe
from medsynth.training.sequences import generate_sequences
from medsynth.training.trainer import check_config, train

TINY = {"resolution": 32, "batch_size": 4, "base_channels": 8, "channel_mult": "1,1,2,2", "codebook_size": 32,
        "codebook_dim": 8, "perceptual": "discriminator", "disc_channels": 8, "disc_start": 2,
        "autoencoder_steps": 3, "prior_steps": 2, "prior_dim": 16, "prior_layers": 1, "prior_heads": 2,
        "revive_after": 2}  # fmt: skip
AUTOENCODER_LOSSES = {"loss", "l1", "perceptual", "codebook", "commitment", "g_adv", "adaptive_weight", "d_loss",
                      "d_loss_real", "d_loss_fake", "perplexity", "codebook_usage", "revived"}  # fmt: skip


@pytest.fixture(scope="module")
def mni():
    image = load_sample("mni152")
    return image.with_array(np.asarray(image.array[60:100]))


def config(out_dir, recipe="vqgan-hdfb", **options) -> TrainConfig:
    settings = {**TINY, **options.pop("settings", {})}
    defaults = {"log_every": 1, "sample_every": 3, "checkpoint_every": 2, "preview_samples": 3, "steps": 1}
    return TrainConfig(recipe=recipe, out_dir=out_dir, settings=settings, **{**defaults, **options})


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mni):
    return {recipe: list(train(config(tmp_path_factory.mktemp(recipe), recipe), [mni])) for recipe in ("vqgan-hdfb", "vqgan")}


def test_both_recipes_are_registered_with_their_block_as_default():
    infos = {info.name: info for info in list_recipes()}
    assert infos["vqgan-hdfb"].settings_cls().block == "hdfb" and infos["vqgan"].settings_cls().block == "resblock"
    s = infos["vqgan-hdfb"].settings_cls()
    assert (s.lr_g, s.lr_d, s.beta1, s.beta2, s.eps, s.batch_size) == (2.25e-5, 2.25e-5, 0.5, 0.9, 1e-8, 8)
    assert (s.codebook_size, s.codebook_dim, s.beta) == (1024, 256, 0.25)
    assert all(info.data_kind == "image2d" for name, info in infos.items() if name.startswith("vqgan"))


@pytest.mark.parametrize("recipe", ["vqgan-hdfb", "vqgan"])
def test_shared_optimiser_settings_build_the_adams_and_the_optional_autoencoder_average(recipe):
    settings_cls = get_recipe(recipe).settings_cls
    assert issubclass(settings_cls, GANOptimizerSettings)
    names = [info.name for info in describe(settings_cls)]
    assert names[0] == "resolution" and names[-5:] == [f.name for f in dataclasses.fields(GANOptimizerSettings)]
    values = {**TINY, "lr_g": 3e-3, "lr_d": 7e-4, "beta1": 0.2, "beta2": 0.95, "eps": 1e-6}
    built = VQGANRecipe()
    built.build(parse(settings_cls, values), torch.device("cpu"))
    autoencoder, discriminator = (built.optimizers[name].param_groups[0] for name in ("autoencoder", "discriminator"))
    assert (autoencoder["lr"], discriminator["lr"]) == (3e-3, 7e-4)
    assert autoencoder["betas"] == discriminator["betas"] == (0.2, 0.95) and autoencoder["eps"] == 1e-6
    assert built.ema is None and built.coder is built.models["autoencoder"]  # as published: no average

    built.build(parse(settings_cls, {**values, "ema_decay": 0.5}), torch.device("cpu"))
    real = torch.rand(4, 1, 32, 32) * 2 - 1
    for step in range(2):
        built.train_step(real, step)
    live, averaged = built.models["autoencoder"], built.coder
    assert averaged is built.ema.module
    drift = [float((a - b.detach()).abs().max()) for a, b in zip(averaged.parameters(), live.parameters())]
    assert max(drift) > 0  # the average lags the trained weights ...
    assert not torch.equal(built.reconstruct(real), _reconstructed_by(live, real))  # ... and it reconstructs


def _reconstructed_by(autoencoder, images):
    autoencoder.eval()
    with torch.no_grad():
        return autoencoder(images)[0].clamp(-1, 1)


@pytest.mark.parametrize("recipe", ["vqgan-hdfb", "vqgan"])
def test_two_stages_train_through_the_engine_with_every_term_logged(runs, recipe):
    got = runs[recipe]
    assert got[0].total_steps == 5  # autoencoder_steps + prior_steps; TrainConfig.steps is ignored
    progress = [e for e in got if isinstance(e, Progress)]
    assert [p.phase for p in progress] == ["stage 1/2: autoencoder"] * 2 + ["stage 1/2: autoencoder + adversarial"] + [
        "stage 2/2: token prior"
    ] * 2
    for p in progress[:3]:
        assert set(p.losses) == AUTOENCODER_LOSSES and all(map(math.isfinite, p.losses.values()))
        assert 1 <= p.losses["perplexity"] <= 32 and 0 < p.losses["codebook_usage"] <= 1
        assert p.losses["perceptual"] > 0
    assert progress[0].losses["adaptive_weight"] == progress[0].losses["d_loss"] == 0.0  # adversarial warm-up
    assert progress[2].losses["adaptive_weight"] > 0 and progress[2].losses["d_loss"] > 0
    assert progress[2].losses["revived"] > 0  # entries unused for 2 steps were revived
    assert [set(p.losses) for p in progress[3:]] == [{"prior_loss"}] * 2
    assert progress[3].losses["prior_loss"] > 0
    samples = [e for e in got if isinstance(e, Samples)]
    assert [s.step for s in samples] == [3] and samples[0].images.shape == (3, 32, 32)
    checkpoint = load_checkpoint(got[-1].checkpoint)
    assert checkpoint.step == 5 and checkpoint.state["progress"]["prior_updates"] == 2
    assert set(checkpoint.state["models"]) == {"autoencoder", "discriminator", "prior"}


def test_generate_decodes_prior_samples_in_data_units_marked_synthetic(runs, mni):
    path = runs["vqgan-hdfb"][-1].checkpoint
    image = generate(path, 3, seed=4)
    checkpoint = load_checkpoint(path)
    assert image.array.shape == (3, 32, 32) and image.axes == "zyx"
    assert image.synthetic.model == "vqgan-hdfb" and image.synthetic.seed == 4
    assert image.modality == mni.modality and image.spacing[1:] == pytest.approx(tuple(checkpoint.data["pixel_spacing"]))
    assert checkpoint.normalization.low <= image.array.min() and image.array.max() <= checkpoint.normalization.high
    assert np.array_equal(generate(path, 3, seed=4).array, image.array)
    assert not np.array_equal(generate(path, 3, seed=5).array, image.array)


def test_a_checkpoint_of_the_autoencoder_stage_reconstructs_but_cannot_sample(runs):
    early = runs["vqgan"][-1].checkpoint.parent / "checkpoint-0000002.safetensors"
    assert load_checkpoint(early).state["progress"]["prior_updates"] == 0
    with pytest.raises(InputError, match="has not trained its token prior yet"):
        generate(early, 2)


def test_resume_across_the_stage_boundary_continues_exactly(tmp_path, runs, mni):
    straight = load_checkpoint(runs["vqgan-hdfb"][-1].checkpoint)
    half = runs["vqgan-hdfb"][-1].checkpoint.parent / "checkpoint-0000002.safetensors"
    resumed_events = list(train(config(tmp_path, resume=half), [mni]))
    assert resumed_events[0].start_step == 2
    resumed = load_checkpoint(resumed_events[-1].checkpoint)
    for name, state in straight.state["models"].items():
        for key, value in state.items():
            assert torch.equal(value, resumed.state["models"][name][key]), f"{name}.{key}"
    assert resumed.state["progress"] == straight.state["progress"]


def test_reconstruction_of_a_volume_keeps_its_grid_and_units(runs, mni):
    result = reconstruct(runs["vqgan-hdfb"][-1].checkpoint, mni, device="cpu")
    recon, difference = result.reconstruction, result.difference
    for out in (recon, difference):
        assert out.array.shape == mni.array.shape and out.axes == mni.axes and out.spacing == mni.spacing
        assert out.origin == mni.origin and np.array_equal(out.direction, mni.direction)
        assert out.synthetic is not None and "reconstruction" in out.synthetic.description
    assert np.allclose(difference.array, recon.array - mni.array.astype(np.float32))
    # Each axial plane is reconstructed from the same plane of the input (the checkpoint's slice axis).
    changed = np.asarray(mni.array).copy()
    changed[5] = 0
    again = reconstruct(runs["vqgan-hdfb"][-1].checkpoint, mni.with_array(changed), device="cpu").reconstruction
    differs = [not np.array_equal(a, b) for a, b in zip(again.array, recon.array)]
    assert differs == [k == 5 for k in range(len(differs))]


def test_reconstruction_of_a_non_square_slice_is_cropped_back_to_it(runs):
    ct = load_sample("ct_slice")
    wide = ct.with_array(np.asarray(ct.array)[20:100])  # 80 x 128: padded to a square, then cropped back
    recon = reconstruct(runs["vqgan"][-1].checkpoint, wide, device="cpu").reconstruction
    assert recon.array.shape == (80, 128) and recon.units == "HU"


def test_reconstruction_needs_a_vqgan_checkpoint_and_a_grey_image(runs, tmp_path, mni):
    dcgan = TrainConfig(recipe="dcgan", out_dir=tmp_path, steps=1, sample_every=0,
                        settings={"batch_size": 2, "g_channels": 4, "d_channels": 4, "latent_dim": 8})  # fmt: skip
    path = list(train(dcgan, [mni]))[-1].checkpoint
    with pytest.raises(InputError, match="has no autoencoder; reconstructions need a vqgan-hdfb or vqgan"):
        reconstruct(path, mni)
    labels = mni.with_array((np.asarray(mni.array) > 50).astype(np.uint8), is_label=True)
    with pytest.raises(InputError, match="a label map"):
        reconstruct(runs["vqgan"][-1].checkpoint, labels)


def test_bad_settings_are_refused_before_training_naming_each_problem(tmp_path, mni):
    with pytest.raises(SettingsError) as excinfo:
        check_config(config(tmp_path / "a", settings={"block": "unet", "codebook_size": 1, "bogus": 2}))
    assert all(word in str(excinfo.value) for word in ("block", "codebook_size", "'bogus'"))
    bad = {"channel_mult": "1,2", "hdfb_kernels": "3,4", "stage_factor": 4, "prior_dim": 17}
    with pytest.raises(SettingsError) as excinfo:
        next(train(config(tmp_path / "b", settings=bad), [mni]))
    message = str(excinfo.value)
    assert "channel_mult='1,2' must give 4" in message and "hdfb_kernels='3,4' must be odd" in message
    assert "resolution 32 is not a multiple of stage_factor**3 = 64" in message and "prior_heads" in message
    assert not (tmp_path / "b").exists()


def test_images_much_smaller_than_the_resolution_are_refused(tmp_path):
    ct = load_sample("ct_slice")  # 128 x 128
    with pytest.raises(InputError, match=r"'ct_slice' has 128x128 pixel planes.*lower resolution to 128"):
        list(train(config(tmp_path, settings={"resolution": 512}), [ct]))


def test_other_data_kinds_are_refused_with_the_reason(tmp_path, mni):
    ct = load_sample("ct_slice")
    colour = ct.with_array(np.stack([np.asarray(ct.array)] * 3, axis=-1), axes="yxc")
    with pytest.raises(InputError, match="is colour.*convert it to grey levels"):
        list(train(config(tmp_path / "rgb"), [colour]))
    pair = (mni, np.zeros(mni.array.shape, dtype=np.uint8))
    with pytest.raises(InputError, match="give 2D .*grey-level arrays"):
        list(train(config(tmp_path / "pair"), [pair]))


def test_a_vqgan_checkpoint_is_not_a_sequence_model_nor_resumed_with_other_sizes(runs, mni):
    with pytest.raises(InputError, match="does not generate sequences"):
        generate_sequences(runs["vqgan"][-1].checkpoint, 1)
    with pytest.raises(CheckpointError, match="does not fit the recipe"):
        list(train(config(runs["vqgan"][-1].checkpoint.parent / "more", "vqgan", resume=runs["vqgan"][-1].checkpoint,
                          settings={"codebook_size": 64, "prior_steps": 4}), [mni]))  # fmt: skip


def test_vgg_perceptual_without_its_weight_file_stops_before_training(tmp_path, monkeypatch, mni):
    monkeypatch.setenv("MEDSYNTH_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError, match="vgg16-397923af.pth"):
        list(train(config(tmp_path / "vgg16", settings={"perceptual": "vgg16"}), [mni]))
    assert not (tmp_path / "vgg16").exists()
    # Generating and reconstructing never need the perceptual network's file.
    recipe = VQGANRecipe()
    recipe.build(parse(HDFBSettings, {**TINY, "perceptual": "vgg16"}), torch.device("cpu"))
    assert recipe.reconstruct(torch.zeros(1, 1, 32, 32)).shape == (1, 1, 32, 32)
