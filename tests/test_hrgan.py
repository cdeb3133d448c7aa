"""The hrgan-dtcr networks and recipe: growth and fade-in, skips, modality conditioning, frame coherence, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import medsynth.training.recipes.hrgan_dtcr  # noqa: F401 - registers the recipe
from medsynth.data.samples import load_sample
from medsynth.errors import InputError, SettingsError
from medsynth.models.hrgan import (
    AdaptiveUpsample,
    HRGANDiscriminator,
    HRGANGenerator,
    modality_index,
    stage_resolutions,
    with_differences,
)
from medsynth.settings import parse
from medsynth.training.checkpoint import load_checkpoint
from medsynth.training.config import TrainConfig
from medsynth.training.events import Finished, Progress
from medsynth.training.recipes.hrgan_dtcr import (
    HRGANDTCRRecipe,
    HRGANSettings,
    growth_schedule,
    real_at_stage,
)
from medsynth.training.trainer import train


@pytest.fixture(scope="module")
def cine():
    return load_sample("us_cine")


@pytest.fixture
def generator() -> HRGANGenerator:
    torch.manual_seed(0)
    return HRGANGenerator(resolution=32, base_resolution=16, content_dim=8, motion_dim=4, width=8, embed_dim=4).eval()


def latents(n: int = 2, frames: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=g), torch.randn(n, frames, 4, generator=g)


def us(n: int = 2) -> torch.Tensor:
    return torch.full((n,), modality_index("US"))


def test_stages_double_from_the_base_resolution():
    assert stage_resolutions(256, 64) == [64, 128, 256]
    assert stage_resolutions(16, 16) == [16]
    with pytest.raises(InputError, match="powers of two"):
        stage_resolutions(96, 16)
    with pytest.raises(InputError, match="at least base_resolution"):
        stage_resolutions(16, 32)


@torch.no_grad()
def test_generator_grows_and_fades_in(generator):
    content, noise = latents()
    base = generator(content, noise, us(), stage=0)
    full = generator(content, noise, us(), stage=1, alpha=1.0)
    start = generator(content, noise, us(), stage=1, alpha=0.0)
    half = generator(content, noise, us(), stage=1, alpha=0.5)
    assert base.shape == (2, 4, 1, 16, 16) and full.shape == (2, 4, 1, 32, 32)
    upsampled = F.interpolate(base.flatten(0, 1), scale_factor=2.0, mode="nearest").view_as(full)
    assert torch.allclose(start, upsampled, atol=1e-6)  # alpha 0: the previous stage, enlarged
    assert torch.allclose(half, (start + full) / 2, atol=1e-6)
    assert not torch.allclose(full, start, atol=1e-3)


def test_growth_schedule_fades_each_stage_in():
    assert growth_schedule(0, 3, stage_steps=10, fade_steps=4) == (0, 1.0)
    assert growth_schedule(10, 3, 10, 4) == (1, 0.0)
    assert growth_schedule(12, 3, 10, 4) == (1, 0.5)
    assert growth_schedule(20, 3, 10, 4) == (1, 1.0)
    assert growth_schedule(24, 3, 10, 4) == (2, 0.0)
    assert growth_schedule(10_000, 3, 10, 4) == (2, 1.0)


def test_real_clips_are_blended_like_the_generator_during_fade_in():
    batch = torch.rand(2, 1, 3, 32, 32)
    at16 = real_at_stage(batch, 16, 1.0)
    assert at16.shape == (2, 3, 1, 16, 16)
    assert torch.allclose(at16[0, 1, 0], F.avg_pool2d(batch[0, :, 1], 2)[0])
    faded = real_at_stage(batch, 32, 0.0)
    assert torch.allclose(faded, F.interpolate(at16.flatten(0, 1), scale_factor=2.0).view_as(faded))


@torch.no_grad()
def test_every_stage_has_a_skip_connection_that_carries_signal(generator):
    assert all(isinstance(block.skip, torch.nn.Conv2d) for block in generator.blocks)
    content, noise = latents()
    before = generator(content, noise, us())
    for block in generator.blocks:
        block.skip.weight.zero_()
        block.skip.bias.zero_()
    assert not torch.allclose(generator(content, noise, us()), before, atol=1e-3)


def test_adaptive_upsampling_mixes_transposed_and_subpixel_paths():
    torch.manual_seed(0)
    up = AdaptiveUpsample(3, 2)
    x = torch.randn(1, 3, 5, 5)
    with torch.no_grad():
        up.mix_logit.copy_(torch.tensor([10.0, -10.0]).view(1, 2, 1, 1))
        out = up(x)
        assert out.shape == (1, 2, 10, 10)
        assert torch.allclose(out[:, 0], up.transposed(x)[:, 0], atol=1e-3)
        assert torch.allclose(out[:, 1], up.subpixel(x)[:, 1], atol=1e-3)


@pytest.mark.parametrize("grad", [True, False], ids=["training", "inference"])
def test_fused_adaptive_upsampling_equals_the_two_paths_it_mixes(grad):
    torch.manual_seed(1)
    up = AdaptiveUpsample(5, 3)
    with torch.no_grad():
        for param in up.parameters():
            param.normal_()
    x = torch.randn(2, 5, 6, 7)
    mix = torch.sigmoid(up.mix_logit)
    expected = mix * up.transposed(x) + (1 - mix) * up.subpixel(x)
    with torch.set_grad_enabled(grad):
        out = up(x)
    assert out.shape == (2, 3, 12, 14)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_inference_path_computes_what_the_training_path_computes(generator):
    """Generation overwrites intermediates in place and reorders work; the images must not change."""
    with torch.no_grad():
        for block in generator.blocks:
            block.film.affine.weight.normal_()
            block.up.mix_logit.normal_()
    content, noise = latents()
    trained = generator(content, noise, us())
    assert trained.requires_grad
    with torch.inference_mode():
        generated = generator(content, noise, us())
        faded = generator(content, noise, us(), stage=0)
    torch.testing.assert_close(generated, trained.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(faded, generator(content, noise, us(), stage=0).detach(), atol=1e-5, rtol=0)
    x = generator.input_map(generator.frame_latents(content, noise), generator.embed(us(), 4), grid=8)
    with torch.inference_mode():
        tiled_input = x.detach().clone()
        large = generator.synthesize(tiled_input, generator.embed(us(), 4), generator.final_stage)
    assert torch.equal(tiled_input, x.detach()), "synthesize must not overwrite its input map"
    torch.testing.assert_close(large, generator.synthesize(x, generator.embed(us(), 4), generator.final_stage).detach(), atol=1e-5, rtol=0)


@torch.no_grad()
def test_modality_conditions_the_input_and_the_intermediate_feature_maps(generator):
    content, noise = latents()
    mr = torch.full((2,), modality_index("MR"))
    assert not torch.allclose(generator(content, noise, us()), generator(content, noise, mr), atol=1e-4)
    # Without the input path, the FiLM layers of the intermediate stages still carry the modality.
    generator.input.weight[:, -4:] = 0
    assert torch.allclose(generator(content, noise, us()), generator(content, noise, mr))
    for block in generator.blocks:
        block.film.affine.weight.normal_()
    assert not torch.allclose(generator(content, noise, us()), generator(content, noise, mr), atol=1e-4)


@torch.no_grad()
def test_frames_of_a_sequence_differ_but_share_content(generator):
    content, noise = latents(n=2, frames=6)
    clips = generator(content, noise, us())
    within = (clips[:, 1:] - clips[:, :-1]).abs().mean()
    between = (clips[0] - clips[1]).abs().mean()
    assert within > 0
    assert within < 0.5 * between
    # The same content with other motion noise keeps the look of the sequence.
    other_motion = generator(content, torch.randn_like(noise), us())
    assert (other_motion - clips).abs().mean() < between


def test_discriminator_sees_frames_and_their_differences():
    frames = torch.randn(2, 4, 1, 16, 16)
    x = with_differences(frames)
    assert torch.equal(x[:, 0, 1], torch.zeros(2, 16, 16))
    assert torch.allclose(x[:, 2, 1], frames[:, 2, 0] - frames[:, 1, 0])
    torch.manual_seed(0)
    d = HRGANDiscriminator(32, 16, width=8)
    logits, features = d(torch.randn(2, 4, 1, 32, 32))
    assert logits.shape == (2,) and features[-1].shape[-2:] == (4, 4)
    # The order of frames matters: a clip played backwards is another clip.
    assert not torch.allclose(d(frames, stage=0)[0], d(frames.flip(1), stage=0)[0])


def test_settings_refuse_a_base_above_the_resolution():
    with pytest.raises(SettingsError, match="base_resolution 64 exceeds resolution 32"):
        HRGANDTCRRecipe().build(parse(HRGANSettings, {"resolution": 32, "base_resolution": 64}), torch.device("cpu"))


@pytest.mark.slow
def test_recipe_trains_on_the_real_ultrasound_cine_through_the_trainer(tmp_path, cine):
    small = cine.with_array(cine.array[:16, ::8, ::8].copy(), spacing=tuple(8 * s for s in cine.spacing))
    settings = {"resolution": 32, "base_resolution": 16, "frames": 4, "batch_size": 2, "g_channels": 4,
                "d_channels": 4, "content_dim": 8, "motion_dim": 4, "stage_steps": 2, "fade_steps": 2,
                "dtcr_features": "discriminator", "dtcr_ramp_steps": 5}  # fmt: skip
    config = TrainConfig(recipe="hrgan-dtcr", out_dir=tmp_path, steps=6, device="cpu", log_every=1, sample_every=0, settings=settings)
    events = list(train(config, [small]))
    progress = [e for e in events if isinstance(e, Progress)]
    assert [p.losses["stage_resolution"] for p in progress] == [16, 16, 32, 32, 32, 32]
    assert [p.losses["fade_alpha"] for p in progress] == [1.0, 1.0, 0.0, 0.5, 1.0, 1.0]
    assert [p.losses["dtcr_weight"] for p in progress] == pytest.approx([0.1, 0.18, 0.26, 0.34, 0.42, 0.5])
    assert all(p.losses["dtcr"] > 0 and p.losses["g_feature_matching"] >= 0 for p in progress)
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.reason == "completed"
    checkpoint = load_checkpoint(finished.checkpoint)
    assert checkpoint.state["progress"]["step"] == 6
    assert checkpoint.data["item_shape"] == [1, 4, 32, 32]


@pytest.mark.slow
def test_validation_schedule_adjusts_lambda_and_resumes_it(tmp_path, cine):
    small = cine.with_array(cine.array[:16, ::16, ::16].copy(), spacing=tuple(16 * s for s in cine.spacing))
    settings = {"resolution": 16, "base_resolution": 16, "frames": 4, "batch_size": 2, "g_channels": 4,
                "d_channels": 4, "content_dim": 8, "motion_dim": 4, "dtcr_features": "discriminator",
                "dtcr_schedule": "validation", "dtcr_validate_every": 1}  # fmt: skip
    config = TrainConfig(recipe="hrgan-dtcr", out_dir=tmp_path, steps=4, device="cpu", log_every=1, sample_every=0, settings=settings)
    events = list(train(config, [small]))
    weights = [e.losses["dtcr_weight"] for e in events if isinstance(e, Progress)]
    assert weights[0] == pytest.approx(0.1)
    assert all(0.1 <= w <= 0.5 for w in weights) and len(set(weights)) > 1
    state = load_checkpoint(events[-1].checkpoint).state["progress"]
    assert state["dtcr_weight"] == pytest.approx(weights[-1]) and state["real_motion"] > 0
