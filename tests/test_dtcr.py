"""DTCR: the loss against its formula, patch placement, lambda schedules, and VGG weights (present, absent, fallback)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import medsynth.training.recipes.hrgan_dtcr  # noqa: F401 - registers the recipe
from medsynth.errors import MissingWeightsError
from medsynth.losses.dtcr import (
    adjusted_weight,
    consistency_penalty,
    dtcr_loss,
    linear_weight,
    random_patches,
    vgg_features,
)
from medsynth.losses.feature_matching import feature_matching_loss
from medsynth.models.vgg import VGGFeatures, load_vgg
from medsynth.settings import parse
from medsynth.training.recipes.hrgan_dtcr import HRGANDTCRRecipe, HRGANSettings

TINY = {"resolution": 32, "base_resolution": 16, "frames": 3, "batch_size": 2, "g_channels": 4, "d_channels": 4,
        "content_dim": 8, "motion_dim": 4}  # fmt: skip


def small_extractor() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, stride=2, padding=1))


def test_penalty_equals_the_formula_on_a_small_feature_network():
    net = small_extractor()
    features = lambda x: [net[:2](x), net(x)]
    patches = torch.randn(2, 4, 1, 8, 8)
    expected = 0.0
    for clip in patches:
        for layer in (net[:2], net):
            phi = layer(clip)  # (T, C, h, w)
            phi = phi / (phi.pow(2).sum(dim=1, keepdim=True) + 1e-6).sqrt()
            expected += sum(((phi[i] - phi[i + 1]) ** 2).mean() for i in range(len(clip) - 1)) / len(patches)
    assert torch.allclose(consistency_penalty(patches, features), torch.as_tensor(expected), rtol=1e-5)


def test_penalty_is_zero_for_a_still_sequence_and_grows_with_flicker():
    net = small_extractor().requires_grad_(False)
    features = lambda x: [net(x)]
    still = torch.randn(1, 1, 1, 16, 16).expand(2, 5, 1, 16, 16)
    assert float(consistency_penalty(still, features)) == 0.0
    flicker = still + 0.5 * torch.randn(2, 5, 1, 16, 16)
    small_flicker = still + 0.05 * torch.randn(2, 5, 1, 16, 16)
    assert consistency_penalty(flicker, features) > consistency_penalty(small_flicker, features) > 0


def test_patches_sit_at_the_same_place_in_every_frame_of_a_clip():
    h = w = 20
    position = torch.arange(h * w, dtype=torch.float32).view(1, 1, 1, h, w)
    frames = position + 1000 * torch.arange(3.0).view(1, 3, 1, 1, 1)  # each frame offset by 1000 * t
    frames = frames.expand(4, 3, 1, h, w)
    patches = random_patches(frames, 8)
    assert patches.shape == (4, 3, 1, 8, 8)
    for clip in patches:
        corner = int(clip[0, 0, 0, 0])
        top, left = divmod(corner, w)
        for t in range(3):
            assert torch.equal(clip[t, 0], frames[0, t, 0, top : top + 8, left : left + 8])


def test_patch_size_is_capped_by_the_frame_size():
    net = small_extractor()
    frames = torch.randn(2, 3, 1, 16, 16, requires_grad=True)
    loss = dtcr_loss(frames, lambda x: [net(x)], patch_size=64)
    loss.backward()
    assert frames.grad is not None and frames.grad.abs().sum() > 0


def test_linear_schedule_rises_from_start_to_end():
    assert linear_weight(0, 0.1, 0.5, 100) == pytest.approx(0.1)
    assert linear_weight(50, 0.1, 0.5, 100) == pytest.approx(0.3)
    assert linear_weight(100, 0.1, 0.5, 100) == pytest.approx(0.5)
    assert linear_weight(10_000, 0.1, 0.5, 100) == pytest.approx(0.5)


def test_validation_rule_moves_lambda_towards_real_motion_within_bounds():
    assert adjusted_weight(0.2, fake_motion=2.0, real_motion=1.0, low=0.1, high=0.5) == pytest.approx(0.25)
    assert adjusted_weight(0.2, fake_motion=0.5, real_motion=1.0, low=0.1, high=0.5) == pytest.approx(0.16)
    assert adjusted_weight(0.2, fake_motion=1.05, real_motion=1.0, low=0.1, high=0.5) == pytest.approx(0.2)
    assert adjusted_weight(0.45, fake_motion=9.0, real_motion=1.0, low=0.1, high=0.5) == pytest.approx(0.5)
    assert adjusted_weight(0.11, fake_motion=0.0, real_motion=1.0, low=0.1, high=0.5) == pytest.approx(0.1)


def test_feature_matching_compares_batch_means():
    real = [torch.ones(4, 2, 3, 3), torch.zeros(4, 5)]
    fake = [torch.zeros(4, 2, 3, 3), torch.zeros(4, 5)]
    assert float(feature_matching_loss(real, fake)) == pytest.approx(0.5)  # (1 + 0) / 2 layers
    shuffled = [real[0][torch.randperm(4)], real[1]]
    assert float(feature_matching_loss(real, shuffled)) == 0.0


def test_missing_vgg_weights_stop_the_recipe_before_training(no_weights):
    recipe = HRGANDTCRRecipe()
    with pytest.raises(MissingWeightsError, match="vgg16-397923af.pth"):
        recipe.build(parse(HRGANSettings, {**TINY, "dtcr_features": "vgg16"}), torch.device("cpu"))


@pytest.mark.parametrize("values", [{"dtcr_features": "discriminator"}, {"dtcr_schedule": "off"}])
def test_weight_free_fallback_and_off_need_no_weights(no_weights, values):
    recipe = HRGANDTCRRecipe()
    recipe.build(parse(HRGANSettings, {**TINY, "dtcr_features": "vgg16", **values}), torch.device("cpu"))
    losses = recipe.train_step(torch.rand(2, 1, 3, 32, 32) * 2 - 1, 0)
    assert (losses["dtcr"] > 0) == (values.get("dtcr_schedule") != "off")


@pytest.mark.slow
def test_vgg_weights_load_from_a_file_in_torchvision_layout(no_weights):
    torch.manual_seed(1)
    reference = VGGFeatures(16)
    state = {f"features.{k[len('features.'):]}": v.clone().half() for k, v in reference.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision files also hold the classifier
    folder = no_weights / "weights"
    folder.mkdir()
    torch.save(state, folder / "vgg16-397923af.pth")

    vgg = load_vgg(16)
    assert torch.equal(vgg.features[0].weight, reference.features[0].weight.half().float())

    recipe = HRGANDTCRRecipe()
    recipe.build(parse(HRGANSettings, {**TINY, "dtcr_features": "vgg16"}), torch.device("cpu"))
    frames = torch.rand(2, 3, 1, 32, 32) * 2 - 1
    torch.manual_seed(5)
    via_recipe = dtcr_loss(frames, recipe._features)
    torch.manual_seed(5)
    direct = dtcr_loss(frames, vgg_features(vgg))
    assert torch.allclose(via_recipe, direct) and float(direct) > 0
