"""Settings declared once: run options, normalisation and the GAN optimiser, as the CLI, the config file,
the widget forms and the recipes all take them."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from medsynth.cli import build_parser, main
from medsynth.data.normalization import NormalizationOptions, percentile_normalization, window_normalization
from medsynth.data.samples import load_sample
from medsynth.errors import SettingsError
from medsynth.io import read_image, write_nifti
from medsynth.settings import describe, parse, setting, valid_values, with_default
from medsynth.training.checkpoint import load_checkpoint
from medsynth.training.config import DECLARED_PARTS, TrainConfig
from medsynth.training.gan_optimizer import GANOptimizerSettings
from medsynth.training.recipe import Recipe, get_recipe

GAN_RECIPES = ("dcgan", "wgan-gp", "hrgan-dtcr", "hagan")
OPTIMIZER_FIELDS = [f.name for f in dataclasses.fields(GANOptimizerSettings)]


def _train_help() -> str:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    return subparsers.choices["train"].format_help()


def test_every_run_and_normalisation_option_is_a_train_flag_with_its_declared_help_and_default():
    text = " ".join(_train_help().split())
    for part in DECLARED_PARTS:
        for info in describe(part):
            flag = "--" + info.name.replace("_", "-")
            assert flag in text, flag
            assert f"{' '.join(info.help.split())} ({valid_values(info)}" in text or not valid_values(info)
            assert f"default {info.default})" in text
    assert {f.name for f in dataclasses.fields(TrainConfig)} >= {i.name for p in DECLARED_PARTS for i in describe(p)}


def test_normalisation_flags_reach_the_checkpoint_of_a_cli_run(tmp_path):
    ct = write_nifti(load_sample("ct_slice"), tmp_path / "ct.nii.gz")
    tiny = [f"--set={item}" for item in ("batch_size=2", "g_channels=4", "d_channels=4", "latent_dim=8")]
    common = ["train", "--recipe", "dcgan", "--data", str(ct), "--steps", "1", "--sample-every", "0", *tiny]
    assert main([*common, "--out", str(tmp_path / "window"), "--normalization", "window", "--window-center", "50",
                 "--window-width", "300"]) == 0  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "pct"), "--percentile-low", "2", "--percentile-high", "98"]) == 0
    window = load_checkpoint(next((tmp_path / "window").rglob("*.safetensors"))).normalization
    assert window == window_normalization(50, 300) and (window.low, window.high) == (-100, 200)
    percentile = load_checkpoint(next((tmp_path / "pct").rglob("*.safetensors"))).normalization
    assert percentile == percentile_normalization([read_image(ct).array], 2, 98)


def test_config_file_keys_are_the_declared_fields_and_bad_values_are_named(tmp_path, capsys):
    config = TrainConfig.from_mapping(
        {"recipe": "dcgan", "out_dir": str(tmp_path), "normalization": "window", "window_width": 350, "steps": 5}
    )
    assert (config.normalization, config.window_center, config.window_width, config.steps) == ("window", 40.0, 350.0, 5)
    with pytest.raises(SettingsError, match=r"unknown configuration key\(s\) window;.*window_center"):
        TrainConfig.from_mapping({"recipe": "dcgan", "out_dir": str(tmp_path), "window": [40, 400]})
    with pytest.raises(SettingsError) as bad:
        TrainConfig(recipe="dcgan", out_dir=tmp_path, normalization="gamma", percentile_low=-1, window_width=0).validate()
    for problem in ("normalization='gamma': must be one of percentile, window", "percentile_low=-1: must be at least 0",
                    "window_width=0: must be at least 1e-06"):  # fmt: skip
        assert problem in str(bad.value)
    with pytest.raises(SettingsError, match="percentile_low=60.0 must be below percentile_high=40.0"):
        TrainConfig(recipe="dcgan", out_dir=tmp_path, percentile_low=60.0, percentile_high=40.0).validate()
    TrainConfig(recipe="dcgan", out_dir=tmp_path, normalization="window", percentile_low=60.0, percentile_high=40.0).validate()
    with pytest.raises(TypeError):
        TrainConfig("dcgan", tmp_path, {}, "cpu", None, None, 0.05, 8, True, 100)  # run options are keywords only


def test_normalisation_options_fit_the_map_on_real_data():
    mni = load_sample("mni152")
    percentile = NormalizationOptions(percentile_low=1.0, percentile_high=99.0).fit_normalization([mni.array])
    assert percentile == percentile_normalization([mni.array], 1.0, 99.0)
    window = NormalizationOptions(normalization="window", window_center=-600, window_width=1500)
    assert window.fit_normalization([]) == window_normalization(-600, 1500)


@pytest.mark.parametrize("name", GAN_RECIPES)
def test_gan_recipes_share_the_optimiser_settings_and_build_their_optimisers_from_them(name):
    settings_cls = get_recipe(name).settings_cls
    assert issubclass(settings_cls, GANOptimizerSettings)
    names = [info.name for info in describe(settings_cls)]
    assert names[-len(OPTIMIZER_FIELDS):] == OPTIMIZER_FIELDS  # the recipe's own settings come first
    base = {info.name: info for info in describe(GANOptimizerSettings)}
    for info in describe(settings_cls)[-len(OPTIMIZER_FIELDS):]:
        assert (info.min, info.max) == (base[info.name].min, base[info.name].max)
        assert info.help.startswith(base[info.name].help)

    small = {"resolution": 64, "batch_size": 2, "g_channels": 4, "d_channels": 4}
    if name == "hrgan-dtcr":
        small = {"resolution": 32, "base_resolution": 16, "frames": 2, "batch_size": 1, "dtcr_schedule": "off"}
    values = {**small, "lr_g": 3e-3, "lr_d": 7e-4, "beta1": 0.2, "beta2": 0.95, "ema_decay": 0.9}
    recipe = get_recipe(name)()
    recipe.build(parse(settings_cls, values), torch.device("cpu"))
    generator, discriminator = (recipe.optimizers[key].param_groups[0] for key in recipe.optimizers)
    assert (generator["lr"], discriminator["lr"]) == (3e-3, 7e-4)
    assert generator["betas"] == discriminator["betas"] == (0.2, 0.95)
    ema = recipe.ema
    for _ in range(100):  # past the warm-up: the decay is then ema_decay itself
        ema.update()
    before = [p.clone() for p in ema.module.parameters()]
    for p in recipe.models["generator"].parameters():
        p.data.add_(1.0)
    ema.update()
    assert all(torch.allclose(after, start + 0.1, atol=1e-5) for after, start in zip(ema.module.parameters(), before))


def test_published_defaults_where_a_recipe_differs_from_the_shared_ones():
    defaults = {name: get_recipe(name).settings_cls() for name in GAN_RECIPES}
    assert (defaults["wgan-gp"].beta1, defaults["wgan-gp"].beta2, defaults["wgan-gp"].lr_g) == (0.0, 0.9, 1e-4)
    assert defaults["dcgan"].lr_d == 5e-5 and "discriminator otherwise wins" in describe_field("dcgan", "lr_d").help
    assert dataclasses.asdict(defaults["hrgan-dtcr"])["lr_g"] == GANOptimizerSettings().lr_g


def describe_field(recipe: str, name: str):
    return next(info for info in describe(get_recipe(recipe).settings_cls) if info.name == name)


def test_adopt_gan_refuses_settings_without_the_optimiser_fields():
    @dataclasses.dataclass
    class Loose:
        lr_g: float = setting(1e-3, "a learning rate")

    class Sketch(Recipe):
        name = "sketch"
        description = "test recipe"
        settings_cls = Loose

        def build(self, settings, device):
            self.settings = settings
            self.adopt_gan(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))

        def train_step(self, batch, step):
            return {}

        def sample(self, n, generator):
            return torch.zeros(n, 1, 2, 2)

    with pytest.raises(TypeError, match="derive Loose from medsynth.training.gan_optimizer.GANOptimizerSettings"):
        Sketch().build(Loose(), torch.device("cpu"))


def test_with_default_keeps_the_declared_range_and_help():
    @dataclasses.dataclass
    class Slow(GANOptimizerSettings):
        lr_g: float = with_default(GANOptimizerSettings, "lr_g", 1e-5, "slow on purpose")

    info = next(i for i in describe(Slow) if i.name == "lr_g")
    assert (info.default, info.min, info.max) == (1e-5, 1e-6, 1e-1)
    assert info.help == "Generator Adam learning rate (slow on purpose)"
    with pytest.raises(SettingsError, match="lr_g=1.0: must be at most 0.1"):
        parse(Slow, {"lr_g": 1.0})

