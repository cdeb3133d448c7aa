"""`cyclegan` on real unpaired MR and CT slices: the ResNet generator, the PatchGAN with instance norm, the
image pool, training through the engine, translation on the input's grid, and the bad-input refusals."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch

from medsynth.cli import main
from medsynth.data.datasets import SliceDataset
from medsynth.data.domain_dataset import DomainPairDataset
from medsynth.data.domains import TwoDomains
from medsynth.data.normalization import percentile_normalization
from medsynth.data.samples import load_sample, sample_path
from medsynth.errors import InputError, SettingsError
from medsynth.io import read_image
from medsynth.models.image_pool import ImagePool
from medsynth.models.patchgan import PatchDiscriminator
from medsynth.models.resnet_generator import ResNetGenerator
from medsynth.settings import parse
from medsynth.training import events
from medsynth.training.checkpoint import load_checkpoint
from medsynth.training.config import TrainConfig
from medsynth.training.generate import load_recipe
from medsynth.training.recipe import get_recipe
from medsynth.training.recipes.cyclegan import CycleGANRecipe, CycleGANSettings
from medsynth.training.trainer import check_config, train
from medsynth.training.translate import translate

TINY = {"resolution": 32, "batch_size": 2, "g_channels": 8, "blocks": 2, "d_channels": 8}
LOSSES = {"g_loss", "d_loss", "g_ab_adversarial", "g_ba_adversarial", "cycle_a", "cycle_b", "identity_a", "identity_b",
          "d_a", "d_b"}  # fmt: skip


@pytest.fixture(scope="module")
def mr():
    """The MNI152 T1 template's central 40 axial slices (domain A)."""
    image = load_sample("mni152")
    return image.with_array(np.asarray(image.array[70:110]))


@pytest.fixture(scope="module")
def ct():
    """The CT slice pydicom ships, in HU (domain B)."""
    return load_sample("ct_slice")


@pytest.fixture(scope="module")
def domains(mr, ct) -> TwoDomains:
    return TwoDomains(a=[mr], b=[ct])


@pytest.fixture(scope="module")
def batch(domains) -> torch.Tensor:
    """Four unpaired items ``(4, 2, 32, 32)``: an MR slice and a CT slice each, in their own maps."""
    maps = percentile_normalization([domains.a[0].array]), percentile_normalization([domains.b[0].array])
    dataset = DomainPairDataset(domains, maps, 32, registered=False)
    torch.manual_seed(0)
    return torch.stack([dataset[i] for i in range(0, 40, 10)])


@pytest.fixture(scope="module")
def run(tmp_path_factory, domains):
    """Events of a 40-step tiny run on MR (A) and CT (B) slices, checkpoints every 10 steps."""
    return list(train(tiny_config(tmp_path_factory.mktemp("cyclegan")), domains))


def tiny_config(out_dir, steps=40, **options) -> TrainConfig:
    settings = {**TINY, **options.pop("settings", {})}
    defaults = {"log_every": 5, "sample_every": 20, "checkpoint_every": 10, "preview_samples": 3}
    return TrainConfig(recipe="cyclegan", out_dir=out_dir, steps=steps, settings=settings, **{**defaults, **options})


def tiny_recipe(**settings) -> CycleGANRecipe:
    recipe = CycleGANRecipe()
    torch.manual_seed(0)
    recipe.build(parse(CycleGANSettings, {**TINY, **settings}), torch.device("cpu"))
    return recipe


@pytest.fixture(scope="module")
def mr_slices(mr) -> torch.Tensor:
    """Eight normalised 32x32 axial MR slices ``(8, 1, 32, 32)``."""
    dataset = SliceDataset([mr], percentile_normalization([mr.array]), 32)
    return torch.stack([dataset[i] for i in range(0, 40, 5)])


# -- models ------------------------------------------------------------------------------------


def test_resnet_generator_keeps_the_image_size_and_range(mr_slices):
    generator = ResNetGenerator(channels=8, blocks=2)
    out = generator(mr_slices)
    assert out.shape == mr_slices.shape
    assert out.abs().max() <= 1.0
    # Instance norm keeps no statistics: an image translates the same alone, in a batch, in eval mode.
    alone = generator.eval()(mr_slices[:1])
    assert torch.allclose(alone, out[:1], atol=1e-5)
    assert not list(generator.buffers())
    with pytest.raises(ValueError, match="multiple of 4"):
        generator(mr_slices[..., :30, :30])


def test_paper_sized_generator_has_the_published_parameter_count():
    # Zhu et al.'s 256 px generator: 64 channels, 9 blocks, about 11.4 M parameters (one channel in and out here).
    count = sum(p.numel() for p in ResNetGenerator(64, 9).parameters())
    assert 11.3e6 < count < 11.4e6
    assert sum(p.numel() for p in ResNetGenerator(64, 6).parameters()) < count


def test_patch_discriminator_takes_instance_norm_and_keeps_batch_norm_by_default(mr_slices):
    default, instance = PatchDiscriminator(8), PatchDiscriminator(8, norm="instance")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in default.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in instance.modules())
    assert any(isinstance(m, torch.nn.InstanceNorm2d) for m in instance.modules())
    assert instance(mr_slices).shape == default(mr_slices).shape == (8, 1, 2, 2)  # 70 x 70 patches on 32 px
    with pytest.raises(ValueError, match="'layer' is not one of"):
        PatchDiscriminator(8, norm="layer")


# -- image pool --------------------------------------------------------------------------------


def test_pool_returns_new_images_while_it_fills(mr_slices):
    pool = ImagePool(size=6)
    torch.manual_seed(0)
    assert torch.equal(pool.query(mr_slices[:4]), mr_slices[:4])
    assert len(pool.images) == 4
    out = pool.query(mr_slices[4:])  # 2 fill the pool, then 2 may be swapped
    assert torch.equal(out[:2], mr_slices[4:6]) and len(pool.images) == 6


def test_a_full_pool_swaps_about_half_of_the_images_for_older_ones(mr_slices):
    pool = ImagePool(size=4)
    torch.manual_seed(0)
    pool.query(mr_slices[:4])
    swapped = 0
    for round_ in range(50):
        new = mr_slices[4:] + 0.01 * (round_ + 1)  # distinct images each round
        before = list(pool.images)
        out = pool.query(new)
        swapped += sum(not torch.equal(image, new[k]) for k, image in enumerate(out))
        # Nothing is lost or duplicated: each older and each new image is either returned or kept.
        assert sorted(map(_key, [*before, *new])) == sorted(map(_key, [*out, *pool.images]))
        assert len(pool.images) == 4
    assert 0.35 < swapped / (50 * len(new)) < 0.65


def _key(image: torch.Tensor) -> bytes:
    return image.numpy().tobytes()


def test_pool_of_size_zero_passes_images_through_and_state_round_trips(mr_slices):
    assert ImagePool(0).query(mr_slices) is mr_slices
    pool = ImagePool(3)
    assert pool.state() is None
    pool.query(mr_slices[:3])
    restored = ImagePool(3)
    restored.load(pool.state())
    assert all(torch.equal(a, b) for a, b in zip(restored.images, pool.images))


# -- the recipe --------------------------------------------------------------------------------


def test_recipe_is_registered_with_the_papers_settings():
    recipe = get_recipe("cyclegan")
    assert recipe.data_kind == "two-domain" and not recipe.registered and recipe.inputs == 1
    assert recipe.directions == {"a2b": "b", "b2a": "a"}
    s = CycleGANSettings()
    assert (s.lr_g, s.lr_d, s.beta1, s.beta2) == (2e-4, 2e-4, 0.5, 0.999)
    assert (s.cycle_weight, s.identity_weight, s.pool_size, s.batch_size) == (10.0, 0.5, 50, 1)


def test_one_real_step_updates_all_four_models_with_every_term_named(batch):
    recipe = tiny_recipe()
    before = {name: [p.clone() for p in model.parameters()] for name, model in recipe.models.items()}
    losses = recipe.train_step(batch, 0)
    assert set(losses) == LOSSES and all(map(math.isfinite, losses.values()))
    for name, model in recipe.models.items():
        assert any(not torch.equal(a, b) for a, b in zip(before[name], model.parameters())), name
    # The generator objective: both adversarial terms, cycle weight 10, identity 0.5 of it.
    expected = (losses["g_ab_adversarial"] + losses["g_ba_adversarial"] + 10 * (losses["cycle_a"] + losses["cycle_b"])
                + 5 * (losses["identity_a"] + losses["identity_b"]))  # fmt: skip
    assert losses["g_loss"] == pytest.approx(expected, rel=1e-5)
    assert losses["d_loss"] == pytest.approx(losses["d_a"] + losses["d_b"], rel=1e-5)
    assert len(recipe.pools["a"].images) == len(recipe.pools["b"].images) == len(batch)
    # The averaged generators moved towards the trained ones.
    assert not torch.equal(next(recipe.emas["g_ab"].module.parameters()), before["g_ab"][0])


def test_learning_rates_stay_then_fall_linearly_over_the_planned_run(batch):
    recipe = tiny_recipe(lr_decay_from=0.5)
    recipe.planned_steps = 6
    factors = [recipe.learning_rate_factor(step) for step in range(7)]
    assert factors == pytest.approx([1, 1, 1, 1, 0.75, 0.5, 0.25])
    recipe.train_step(batch, 5)
    assert recipe.learning_rates() == pytest.approx({"lr_generators": 1e-4, "lr_discriminators": 1e-4})
    constant = tiny_recipe(lr_decay_from=1.0)
    constant.planned_steps = 100
    assert constant.learning_rate_factor(99) == 1.0
    assert tiny_recipe().learning_rate_factor(10_000) == 1.0  # loaded to translate: no run, no schedule


def test_the_trainer_tells_the_recipe_the_runs_length(run):
    last = [e for e in run if isinstance(e, events.Progress)][-1]
    # 40 planned steps, decay from step 20: the last logged rate (step 40) is 1/21 of the initial 2e-4.
    assert last.learning_rates["lr_generators"] == pytest.approx(2e-4 * (1 - 19 / 21))


def test_each_domain_gets_its_own_augmentation(batch):
    recipe = tiny_recipe()
    recipe.augmenting = True
    torch.manual_seed(0)
    augmented = recipe.augment(batch)
    assert augmented.shape == batch.shape and not torch.equal(augmented, batch)
    recipe.augmenting = False
    assert recipe.augment(batch) is batch


# -- the engine, translation, the CLI ----------------------------------------------------------


def test_cyclegan_trains_on_unpaired_mr_and_ct_through_the_engine(run, ct):
    assert isinstance(run[-1], events.Finished) and run[-1].reason == "completed" and run[-1].step == 40
    progress = [e for e in run if isinstance(e, events.Progress)]
    assert all(set(p.losses) == LOSSES and all(map(math.isfinite, p.losses.values())) for p in progress)
    assert progress[0].learning_rates["lr_generators"] == 2e-4 > progress[-1].learning_rates["lr_generators"]
    checkpoint = load_checkpoint(run[-1].checkpoint)
    assert checkpoint.data["b"]["units"] == "HU" and checkpoint.normalization_b != checkpoint.normalization
    # Previews are A -> B translations of training slices, in B's units (HU).
    samples = [e for e in run if isinstance(e, events.Samples)]
    assert samples[-1].images.shape == (3, 32, 32)
    low, high = checkpoint.normalization_b.low, checkpoint.normalization_b.high
    assert low - 1 <= samples[-1].images.min() and samples[-1].images.max() <= high + 1
    assert set(checkpoint.state["emas"]) == {"g_ab", "g_ba"} and checkpoint.state["pools"]["a"].shape[0] > 0


def test_cycle_reconstruction_improves_with_training(run, domains):
    folder = run[-1].checkpoint.parent
    first, last = (load_checkpoint(folder / f"checkpoint-{step:07d}.safetensors") for step in (10, 40))
    maps = first.normalization, first.normalization_b
    torch.manual_seed(1)
    dataset = DomainPairDataset(domains, maps, 32, registered=False)
    items = torch.stack([dataset[i] for i in range(0, len(dataset), 4)])
    errors = []
    for checkpoint in (first, last):
        recipe = load_recipe(checkpoint, "cpu")
        for direction, back, channel in (("a2b", "b2a", 0), ("b2a", "a2b", 1)):
            real = items[:, channel : channel + 1]
            errors.append(float((recipe.translate(recipe.translate(real, direction), back) - real).abs().mean()))
    early_a, early_b, late_a, late_b = errors
    assert late_a < 0.7 * early_a and late_b < 0.7 * early_b


def test_resume_continues_exactly_like_a_straight_run(tmp_path, run, domains):
    straight = load_checkpoint(run[-1].checkpoint)
    half = run[-1].checkpoint.parent / "checkpoint-0000020.safetensors"
    resumed = list(train(tiny_config(tmp_path / "resumed", resume=half), domains))
    again = load_checkpoint(resumed[-1].checkpoint)
    for part in ("models", "emas"):
        for name, state in straight.state[part].items():
            for key, value in state.items():
                assert torch.equal(value, again.state[part][name][key]), f"{part}/{name}/{key}"
    assert torch.equal(straight.state["pools"]["b"], again.state["pools"]["b"])


def test_translation_lands_on_the_input_grid_in_the_other_domains_units(run, mr, ct):
    checkpoint = load_checkpoint(run[-1].checkpoint)
    to_ct = translate(checkpoint, [mr], device="cpu")
    assert to_ct.array.shape == mr.array.shape and np.allclose(to_ct.affine, mr.affine)
    assert (to_ct.modality, to_ct.units) == ("CT", "HU") and to_ct.synthetic.model == "cyclegan"
    assert to_ct.name == "cyclegan a2b of mni152"
    hu = checkpoint.normalization_b
    assert hu.low - 1 <= to_ct.array.min() and to_ct.array.max() <= hu.high + 1
    to_mr = translate(checkpoint, [ct], direction="b2a", device="cpu")
    assert to_mr.array.shape == ct.array.shape and np.allclose(to_mr.affine, ct.affine)
    assert to_mr.modality == mr.modality and to_mr.units == mr.units and "b2a" in to_mr.name
    with pytest.raises(InputError, match="takes one image"):
        translate(checkpoint, [mr, mr])


def test_plain_load_cannot_sample_and_says_how_to_translate(run):
    recipe = load_recipe(load_checkpoint(run[-1].checkpoint), "cpu")
    with pytest.raises(InputError, match="medsynth.training.translate"):
        recipe.sample(2, torch.Generator())


def test_cli_trains_and_translates_both_ways_onto_the_input_grid(tmp_path, capsys):
    # Domain A: the MNI152 T1 template at 6 mm; domain B: the CT slice. Unpaired, of different sizes.
    source = nib.load(sample_path("mni152"))
    affine = source.affine @ np.diag([6.0, 6.0, 6.0, 1.0])
    mr_path = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(source.dataobj, dtype=np.float32)[::6, ::6, ::6], affine), mr_path)
    ct_path = sample_path("ct_slice")
    settings = [f"--set={key}={value}" for key, value in TINY.items()]
    base = ["train", "--recipe", "cyclegan", "--out", str(tmp_path / "runs"), "--steps", "3", "--device", "cpu",
            *settings]  # fmt: skip
    assert main([*base, "--data", str(mr_path)]) == 2
    assert "--data-b" in capsys.readouterr().err and not (tmp_path / "runs").exists()
    assert main([*base, "--data", str(mr_path), "--data-b", str(ct_path), "--name", "one"]) == 0
    checkpoint = sorted((tmp_path / "runs" / "one").glob("checkpoint-*.safetensors"))[-1]

    out = tmp_path / "ct-like.nii.gz"
    assert main(["generate", str(checkpoint), "--input", str(mr_path), "--out", str(out), "--device", "cpu"]) == 0
    written, given = nib.load(out), nib.load(mr_path)
    assert written.shape == given.shape and np.allclose(written.affine, given.affine)
    assert b"SYNTHETIC" in written.header["descrip"].tobytes()
    back = tmp_path / "mr-like.nii.gz"
    argv = ["generate", str(checkpoint), "--input", str(ct_path), "--direction", "b2a", "--out", str(back)]
    assert main([*argv, "--device", "cpu"]) == 0
    assert nib.load(back).shape[:2] == read_image(ct_path).array.shape[::-1]

    for argv, message in (
        (["--num", "2"], "translates given images: give --input IMAGE (once)"),
        (["--input", str(mr_path), "--input", str(mr_path)], "takes one image, but 2 were given"),
        (["--input", str(mr_path), "--direction", "sideways"], "direction 'sideways' is not one of"),
    ):
        assert main(["generate", str(checkpoint), *argv, "--out", str(tmp_path / "no.nii.gz")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "no.nii.gz").exists()


def test_bad_settings_and_inputs_are_refused_before_training(tmp_path, domains, ct):
    with pytest.raises(SettingsError) as excinfo:
        check_config(tiny_config(tmp_path / "bad", settings={"resolution": 16, "blocks": 0, "bogus": 1}))
    message = str(excinfo.value)
    assert "resolution=16: must be one of 32, 64, 128, 256" in message and "blocks" in message and "'bogus'" in message
    with pytest.raises(InputError, match="domain B has no images"):
        list(train(tiny_config(tmp_path / "no-b"), TwoDomains(a=domains.a, b=[])))
    with pytest.raises(InputError, match="pass medsynth.data.domains.TwoDomains"):
        list(train(tiny_config(tmp_path / "one-set"), domains.a))
    colour = ct.with_array(np.stack([np.asarray(ct.array)] * 3, axis=-1), axes="yxc")
    with pytest.raises(InputError, match="is colour.*grey"):
        list(train(tiny_config(tmp_path / "rgb"), TwoDomains(a=domains.a, b=[colour])))
    assert not any((tmp_path / name).exists() for name in ("bad", "no-b", "one-set"))
