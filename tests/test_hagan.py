"""`hagan` on real MNI152 slices: DiffAugment without leaks, AttnMix, the U-Net discriminator, the reverse skip, the engine."""

from __future__ import annotations

import math
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medsynth.cli import main
from medsynth.data.datasets import SliceDataset
from medsynth.data.diffaugment import POLICIES, cutout, diff_augment, policy_transforms, translate
from medsynth.data.normalization import percentile_normalization
from medsynth.data.samples import load_sample, sample_path
from medsynth.io import read_image
from medsynth.errors import CheckpointError, SettingsError, TrainingError
from medsynth.losses.attnmix import box_masks, consistency_loss, mix
from medsynth.models.hagan import HAGANGenerator, ReverseSkip
from medsynth.models.unet_discriminator import UNetDiscriminator
from medsynth.settings import parse
from medsynth.training import events
from medsynth.training.checkpoint import load_checkpoint, save_checkpoint
from medsynth.training.config import TrainConfig
from medsynth.training.generate import generate, load_recipe
from medsynth.training.recipes.dcgan import DCGANRecipe, DCGANSettings
from medsynth.training.recipes.hagan import HAGANRecipe, HAGANSettings
from medsynth.training.trainer import check_config, train

TINY = {"batch_size": 4, "g_channels": 4, "d_channels": 4, "latent_dim": 16, "mix_probability": 1.0, "mix_warmup_steps": 0}
ALL_LOSSES = {"d_loss", "g_loss", "d_image_real", "d_image_fake", "d_pixel_real", "d_pixel_fake", "d_mix",
              "d_consistency", "g_image", "g_pixel"}  # fmt: skip


@pytest.fixture(scope="module")
def mni():
    """The MNI152 template's central 60 axial slices."""
    image = load_sample("mni152")
    return image.with_array(np.asarray(image.array[50:110]))


@pytest.fixture(scope="module")
def slices(mni) -> torch.Tensor:
    """Eight normalised 64x64 axial slices ``(8, 1, 64, 64)``."""
    dataset = SliceDataset([mni], percentile_normalization([mni.array]), 64)
    return torch.stack([dataset[i] for i in range(0, 48, 6)])


@pytest.fixture(scope="module")
def run(tmp_path_factory, mni):
    """Events of a 4-step tiny hagan run that mixes every step, checkpoints at steps 2 and 4."""
    return list(train(tiny_config(tmp_path_factory.mktemp("hagan")), [mni]))


def tiny_config(out_dir, steps=4, **options) -> TrainConfig:
    settings = dict(TINY, **options.pop("settings", {}))
    defaults = {"log_every": 1, "sample_every": 2, "checkpoint_every": 2, "preview_samples": 3}
    return TrainConfig(recipe="hagan", out_dir=out_dir, steps=steps, settings=settings, **{**defaults, **options})


def tiny_recipe(augmenting=True, **settings) -> HAGANRecipe:
    recipe = HAGANRecipe()
    recipe.augmenting = augmenting
    torch.manual_seed(0)
    recipe.build(parse(HAGANSettings, {**TINY, **settings}), torch.device("cpu"))
    return recipe


# -- DiffAugment -------------------------------------------------------------------------------


def test_translation_shifts_each_image_by_whole_pixels_and_passes_gradients(slices):
    torch.manual_seed(0)
    x = slices.clone().requires_grad_(True)
    out = translate(x)
    out.sum().backward()
    shifts = [_shift_of(moved, original) for moved, original in zip(out.detach()[:, 0], slices[:, 0])]
    assert None not in shifts and len(set(shifts)) > 1  # every image shifted, each by its own draw
    # Each input pixel that lands in the output passes a gradient of exactly 1, the others 0.
    assert set(x.grad.unique().tolist()) <= {0.0, 1.0}
    for (dy, dx), grad in zip(shifts, x.grad):
        assert grad.sum() == (64 - abs(dy)) * (64 - abs(dx))


def _shift_of(moved: torch.Tensor, original: torch.Tensor) -> tuple[int, int] | None:
    """The whole-pixel shift (at most 8) that turns `original` into `moved` with -1 fill, or None."""
    padded = F.pad(original, (8, 8, 8, 8), value=-1.0)
    h, w = original.shape
    for dy in range(-8, 9):
        for dx in range(-8, 9):
            if torch.equal(moved, padded[8 - dy : 8 - dy + h, 8 - dx : 8 - dx + w]):
                return dy, dx
    return None


def test_cutout_blanks_one_square_per_image_and_stops_its_gradient(slices):
    torch.manual_seed(0)
    x = slices.clone().requires_grad_(True)
    out = cutout(x)
    out.sum().backward()
    for original, blanked, grad in zip(slices[:, 0], out.detach()[:, 0], x.grad[:, 0]):
        changed = blanked != original
        assert (blanked[grad == 0] == -1).all() and torch.equal(blanked[grad == 1], original[grad == 1])
        rows, cols = torch.nonzero(grad == 0, as_tuple=True)
        side_h, side_w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert (grad == 0).sum() == side_h * side_w and side_h <= 32 and side_w <= 32  # one square, clipped
        assert changed.sum() <= (grad == 0).sum()


def test_color_is_an_affine_intensity_change_per_image(slices):
    torch.manual_seed(0)
    out = diff_augment(slices, "color")
    for original, changed in zip(slices.flatten(1), out.flatten(1)):
        scale, offset = np.polyfit(original.numpy(), changed.numpy(), 1)
        assert 0.5 <= scale <= 1.5
        np.testing.assert_allclose(changed.numpy(), scale * original.numpy() + offset, atol=1e-5)


def test_policies_name_every_subset_and_unknown_transforms_are_refused():
    assert len(POLICIES) == 7 and POLICIES[0] == "translation,cutout,color"
    assert policy_transforms("cutout, color") == ("cutout", "color")
    with pytest.raises(ValueError, match="'rotate'.*translation, cutout, color"):
        policy_transforms("translation,rotate")


def test_a_generator_does_not_learn_an_augmentation_applied_to_both_branches(slices):
    """Cutout on real images only teaches the generator to draw the squares; on both branches it does not."""
    real = F.interpolate(slices[3:4], size=32, mode="area")
    tissue = real[0, 0] > -0.5

    def train_bank(both: bool) -> torch.Tensor:
        torch.manual_seed(0)
        bank = nn.Parameter(torch.zeros(8, 1, 32, 32))  # a generator of eight learnt images
        critic = nn.Sequential(nn.Conv2d(1, 16, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(16, 32, 4, 2, 1),
                               nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(2048, 1))  # fmt: skip
        opt_g = torch.optim.Adam([bank], lr=1e-2, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(critic.parameters(), lr=2e-4, betas=(0.5, 0.999))
        seen = (lambda x: diff_augment(x, "cutout")) if both else (lambda x: x)
        ones, zeros = torch.ones(8, 1), torch.zeros(8, 1)
        for _ in range(300):
            d_loss = F.binary_cross_entropy_with_logits(critic(diff_augment(real.expand(8, -1, -1, -1), "cutout")), ones)
            d_loss = d_loss + F.binary_cross_entropy_with_logits(critic(seen(torch.tanh(bank).detach())), zeros)
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
            g_loss = F.binary_cross_entropy_with_logits(critic(seen(torch.tanh(bank))), ones)
            opt_g.zero_grad()
            g_loss.backward()
            opt_g.step()
        return torch.tanh(bank).detach()

    def blanked_tissue(images):
        return ((images[:, 0] < -0.7) & tissue).float().sum((1, 2)).mean() / tissue.sum()

    leaky, both = train_bank(both=False), train_bank(both=True)
    assert blanked_tissue(leaky) > 3 * blanked_tissue(both)
    assert (both - real).abs().mean() < (leaky - real).abs().mean()


def _record_discriminator_inputs(recipe, batch, step=1000):
    """Real and generated images as the generator made them, and what the discriminator saw, in one step."""
    seen, made = [], []
    recipe.models["discriminator"].register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    recipe.models["generator"].register_forward_hook(lambda module, args, out: made.append(out.detach()))
    recipe.train_step(batch, step)
    return seen, made


@pytest.mark.parametrize("policy", ["cutout", "translation"])
def test_hagan_augments_real_and_generated_images_alike_in_both_steps(slices, policy):
    recipe = tiny_recipe(augment_policy=policy, attnmix=False)
    seen, made = _record_discriminator_inputs(recipe, slices[:4])
    (d_real, d_fake, g_fake), (fake_d, fake_g) = seen, made
    for shown, source in ((d_real, slices[:4]), (d_fake, fake_d), (g_fake, fake_g)):
        for augmented, original in zip(shown[:, 0], source[:, 0]):
            if policy == "cutout":  # a blanked square only
                assert (augmented[augmented != original] == -1).all()
            else:
                assert _shift_of(augmented, original) is not None
        assert (shown != source).any()
    if policy == "cutout":  # generated images are never exactly -1, so each shows its square
        assert all((augmented != original).any() for augmented, original in zip(d_fake, fake_d))
    plain = tiny_recipe(augmenting=False, augment_policy=policy, attnmix=False)
    seen, made = _record_discriminator_inputs(plain, slices[:4])
    assert torch.equal(seen[0], slices[:4]) and torch.equal(seen[1], made[0]) and torch.equal(seen[2], made[1])


@pytest.mark.parametrize("augmenting", [True, False])
def test_dcgan_augments_its_generated_images_too(slices, augmenting):
    recipe = DCGANRecipe()
    recipe.augmenting = augmenting
    recipe.build(parse(DCGANSettings, {"batch_size": 4, "g_channels": 4, "d_channels": 4, "latent_dim": 16}), torch.device("cpu"))
    (d_real, d_fake, g_fake), (fake_d, fake_g) = _record_discriminator_inputs(recipe, slices[:4])
    for shown, source in ((d_real, slices[:4]), (d_fake, fake_d), (g_fake, fake_g)):
        assert torch.equal(shown, source) != augmenting


def test_the_trainer_hands_recipes_real_batches_as_they_are(tmp_path, mni, monkeypatch):
    batches = []
    original = HAGANRecipe.train_step

    def recording(self, batch, step):
        batches.append((batch.clone(), self.augmenting))
        return original(self, batch, step)

    monkeypatch.setattr(HAGANRecipe, "train_step", recording)
    list(train(tiny_config(tmp_path, steps=2, sample_every=0), [mni]))
    dataset = SliceDataset([mni], load_checkpoint(tmp_path / "checkpoint-0000002.safetensors").normalization, 64)
    items = torch.stack([dataset[i] for i in range(len(dataset))]).flatten(1)
    for batch, augmenting in batches:
        assert augmenting  # 60 slices: the run augments, inside the recipe
        assert all((items == image.flatten()).all(dim=1).any() for image in batch)


# -- AttnMix -------------------------------------------------------------------------------------


def test_cutmix_masks_are_one_box_of_real_or_generated_pixels():
    torch.manual_seed(0)
    masks = box_masks(64, 32, "cutmix")
    for mask in masks[:, 0]:
        assert _is_box(mask) or _is_box(1 - mask)
    assert 0.3 < masks.mean() < 0.7


def _is_box(mask: torch.Tensor) -> bool:
    rows, cols = torch.nonzero(mask, as_tuple=True)
    return len(rows) > 0 and mask.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)


def test_attention_boxes_cover_where_the_discriminator_is_most_sure():
    fake_logits, real_logits = torch.zeros(32, 1, 16, 16), torch.zeros(32, 1, 16, 16)
    fake_logits[:, :, 2:5, 10:13] = -6.0  # this region of the generated image looks most fake
    real_logits[:, :, 11:14, 3:6] = 6.0  # this region of the real image looks most real
    torch.manual_seed(1)
    masks = box_masks(32, 32, "attention", real_logits, fake_logits)[:, 0]
    covered = 0
    for mask in masks:
        real_box = mask.mean() < 1 and mask[5:9, 21:25].all()  # real content pasted over the fake's hot spot
        fake_box = mask.mean() > 0 and not mask[23:27, 7:11].any()  # generated content over the real's hot spot
        covered += bool(real_box or fake_box)
    assert covered >= 28  # boxes smaller than the 6x6 spot sit inside it


def test_consistency_holds_for_a_pixelwise_discriminator_only(slices):
    torch.manual_seed(0)
    real, fake = slices[:4], torch.tanh(torch.randn(4, 1, 64, 64))
    mask = box_masks(4, 64, "cutmix")
    pointwise, spatial = nn.Conv2d(1, 1, 1), nn.Conv2d(1, 1, 7, padding=3)
    with torch.no_grad():
        for d, expected_zero in ((pointwise, True), (spatial, False)):
            loss = consistency_loss(d(mix(real, fake, mask)), d(real), d(fake), mask)
            assert (loss < 1e-10) == expected_zero


# -- networks ------------------------------------------------------------------------------------


def test_unet_discriminator_gives_image_and_pixel_logits_and_encoder_features():
    x = torch.randn(2, 1, 64, 64)
    out = UNetDiscriminator(64, 4)(x)
    assert out.image.shape == (2,) and out.coarse.shape == (2, 1, 4, 4) and out.pixels.shape == (2, 1, 64, 64)
    assert [f.shape[-1] for f in out.features] == [32, 16, 8, 4] and out.local is out.pixels
    assert torch.allclose(out.image, out.coarse.mean(dim=(1, 2, 3)))
    encoder_only = UNetDiscriminator(64, 4, decoder=False)
    flat = encoder_only(x)
    assert flat.pixels is None and flat.local is flat.coarse
    assert sum(p.numel() for p in encoder_only.parameters()) < sum(p.numel() for p in UNetDiscriminator(64, 4).parameters())


@pytest.mark.parametrize("resolution", [64, 128, 256])
def test_every_offered_resolution_builds_and_samples(resolution):
    recipe = tiny_recipe(resolution=resolution)
    assert recipe.sample(2, torch.Generator().manual_seed(0)).shape == (2, 1, resolution, resolution)
    out = recipe.models["discriminator"](torch.zeros(1, 1, resolution, resolution))
    assert out.pixels.shape == (1, 1, resolution, resolution) and len(out.features) == len(recipe.models["generator"].stages)


def test_reverse_skip_starts_as_identity_and_follows_observed_statistics():
    skip = ReverseSkip(discriminator_width=8, generator_width=4)
    h = torch.randn(2, 4, 8, 8)
    assert torch.equal(skip(h), h)
    real, fake = torch.randn(16, 8, 4, 4) * 3 + 1, torch.randn(16, 8, 4, 4)
    for _ in range(100):
        skip.observe(real, fake)
    torch.testing.assert_close(skip.real_mean, real.mean(dim=(0, 2, 3)), atol=1e-4, rtol=0)
    torch.testing.assert_close(skip.fake_std, fake.std(dim=(0, 2, 3)), atol=1e-4, rtol=0)
    nn.init.normal_(skip.modulation.weight, std=0.1)
    before = skip(h)
    skip.observe(real * 2, fake, momentum=1.0)
    assert not torch.allclose(skip(h), before)


def test_ablation_flags_remove_each_component(slices):
    full = tiny_recipe()
    assert set(full.train_step(slices[:4], 1000)) == ALL_LOSSES
    assert full.models["generator"].reverse_skips is not None
    no_pixels = tiny_recipe(hierarchical=False)
    assert no_pixels.models["discriminator"].decoder is None
    assert set(no_pixels.train_step(slices[:4], 1000)) == ALL_LOSSES - {"d_pixel_real", "d_pixel_fake", "g_pixel"}
    assert set(tiny_recipe(attnmix=False).train_step(slices[:4], 1000)) == ALL_LOSSES - {"d_mix", "d_consistency"}
    assert tiny_recipe(reverse_skip=False).models["generator"].reverse_skips is None
    no_augment = tiny_recipe(diffaugment=False, attnmix=False)
    seen, made = _record_discriminator_inputs(no_augment, slices[:4])
    assert torch.equal(seen[0], slices[:4]) and torch.equal(seen[1], made[0])
    assert tiny_recipe(mix_warmup_steps=100).mix_probability(50) == pytest.approx(0.5)


# -- the engine, generation, bad input -----------------------------------------------------------


def test_hagan_trains_through_the_engine_naming_every_loss_term(run):
    assert isinstance(run[-1], events.Finished) and run[-1].reason == "completed" and run[-1].step == 4
    progress = [e for e in run if isinstance(e, events.Progress)]
    assert [p.step for p in progress] == [1, 2, 3, 4]
    assert all(set(p.losses) == ALL_LOSSES and all(map(math.isfinite, p.losses.values())) for p in progress)
    samples = [e for e in run if isinstance(e, events.Samples)]
    assert [s.step for s in samples] == [2, 4] and samples[0].images.shape == (3, 64, 64)
    checkpoint = load_checkpoint(run[-1].checkpoint)
    assert checkpoint.recipe == "hagan" and checkpoint.settings["mix_mode"] == "attention"
    skips = checkpoint.state["ema"]
    assert any(key.endswith("real_mean") and value.abs().sum() > 0 for key, value in skips.items())


def test_sampling_needs_no_data_and_uses_the_stored_statistics(run):
    path = run[-1].checkpoint
    image = generate(path, 5, seed=3, device="cpu")  # from the checkpoint alone
    assert image.array.shape == (5, 64, 64) and image.synthetic.model == "hagan"
    generator = load_recipe(load_checkpoint(path), "cpu").ema.module
    latents = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = generator(latents)
        for skip in generator.reverse_skips:
            skip.real_mean += 1.0
        assert not torch.allclose(generator(latents), before)


def test_resume_continues_exactly_like_a_straight_run(tmp_path, mni, run):
    straight = load_checkpoint(run[-1].checkpoint)
    half = run[-1].checkpoint.parent / "checkpoint-0000002.safetensors"
    resumed = list(train(tiny_config(tmp_path / "resumed", resume=half), [mni]))
    again = load_checkpoint(resumed[-1].checkpoint)
    for name, state in straight.state["models"].items():
        for key, value in state.items():
            assert torch.equal(value, again.state["models"][name][key]), f"{name}/{key}"


def test_medsynth_generate_writes_synthetic_nifti_on_the_training_grid(run, tmp_path):
    out = tmp_path / "synthetic.nii.gz"
    assert main(["generate", str(run[-1].checkpoint), "--num", "3", "--out", str(out), "--device", "cpu"]) == 0
    stored = nib.load(out)
    assert stored.shape == (64, 64, 3) and b"SYNTHETIC" in stored.header["descrip"].tobytes()
    # The template's 1 mm, 233 x 197 mm slices were padded to 233 px and trained at 64 px.
    assert read_image(out).spacing == pytest.approx((1.0, 233 / 64, 233 / 64), rel=1e-4)


def test_a_checkpoint_whose_settings_are_bad_or_do_not_fit_its_weights_is_refused(run, tmp_path):
    checkpoint = load_checkpoint(run[-1].checkpoint)

    def with_settings(name: str, **changes) -> object:
        edited = replace(checkpoint, settings={**checkpoint.settings, **changes}, path=None)
        return save_checkpoint(edited, tmp_path / f"{name}.safetensors")

    stored = "resolution.safetensors stores settings .*resolution=100: must be one of 64, 128, 256"
    with pytest.raises(CheckpointError, match=stored):
        generate(with_settings("resolution", resolution=100), 2, device="cpu")
    for name, changes in {"no-skip": {"reverse_skip": False}, "no-decoder": {"hierarchical": False},
                          "wider": {"g_channels": 8}}.items():  # fmt: skip
        with pytest.raises(CheckpointError, match=f"{name}.safetensors .*does not match its recipe.s models"):
            generate(with_settings(name, **changes), 2, device="cpu")


def test_bad_settings_are_refused_before_training_naming_each_key(tmp_path, mni, capsys):
    config = tiny_config(tmp_path / "out", settings={"resolution": 100, "mix_probability": 2.0,
                                                      "augment_policy": "rotate", "bogus": 1})  # fmt: skip
    with pytest.raises(SettingsError) as excinfo:
        check_config(config)
    message = str(excinfo.value)
    assert all(key in message for key in ("resolution", "mix_probability", "augment_policy", "'bogus'"))
    assert not (tmp_path / "out").exists()
    data = sample_path("mni152")
    code = main(["train", "--recipe", "hagan", "--data", str(data), "--out", str(tmp_path / "cli"), "--set", "mix_mode=best"])
    assert code == 2 and "mix_mode" in capsys.readouterr().err and not (tmp_path / "cli").exists()


def test_a_non_finite_loss_stops_hagan_without_a_broken_checkpoint(tmp_path, mni, monkeypatch):
    import medsynth.training.recipes.hagan as hagan

    real_bce = hagan._bce
    monkeypatch.setattr(hagan, "_bce", lambda logits, target: real_bce(logits, target) * float("nan"))
    with pytest.raises(TrainingError, match="not finite"):
        list(train(tiny_config(tmp_path, steps=2), [mni]))
    assert not list(tmp_path.glob("*.safetensors"))
