"""hrgan-dtcr on a machine without VGG weights: the CLI names the weight-free option, the widget's defaults use it."""

from __future__ import annotations

import medsynth.training.recipes.hrgan_dtcr  # noqa: F401 - registers the recipe
from medsynth.cli import main
from medsynth.data.samples import sample_path
from medsynth.training.recipe import get_recipe


def test_the_cli_without_vgg_weights_exits_naming_the_weight_free_option(no_weights, capsys):
    out = no_weights / "run"
    cine = sample_path("us_cine")
    code = main(["train", "--recipe", "hrgan-dtcr", "--data", str(cine), "--out", str(out), "--steps", "1",
                 "--set", "resolution=32", "--set", "base_resolution=16", "--set", "frames=4"])  # fmt: skip
    err = capsys.readouterr().err
    assert code != 0
    assert "vgg16-397923af.pth" in err and "--set dtcr_features=discriminator" in err
    assert not list(out.glob("checkpoint-*"))


def test_local_defaults_choose_the_weight_free_features_only_when_vgg_is_missing(no_weights):
    recipe = get_recipe("hrgan-dtcr")
    values, note = recipe.local_defaults()
    assert values == {"dtcr_features": "discriminator"}
    assert "vgg16-397923af.pth not found" in note and "dtcr_features=discriminator" in note

    (no_weights / "weights").mkdir()
    (no_weights / "weights" / "vgg16-397923af.pth").write_bytes(b"")  # only its presence is looked at here
    assert recipe.local_defaults() == ({}, "")
    assert get_recipe("dcgan").local_defaults() == ({}, "")
