"""`hrgan-dtcr`: progressively grown sequence GAN with dynamic temporal consistency regularisation.

After "Hyper-Resolution GANs for Dynamic Medical Image Synthesis via Temporal Consistency
Regularization"; networks in `medsynth.models.hrgan`, the DTCR term in `medsynth.losses.dtcr`,
feature matching in `medsynth.losses.feature_matching`. docs/hrgan-dtcr.md explains every choice.

Growth: stage 0 (`base_resolution`) trains for `stage_steps`; each later stage first fades in over
`fade_steps` (alpha 0 -> 1), then trains for `stage_steps`. The schedule depends on the step number
only, so resumed runs grow exactly as uninterrupted ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from medsynth.errors import MissingWeightsError, SettingsError
from medsynth.losses.dtcr import (
    FeatureFn,
    adjusted_weight,
    dtcr_loss,
    linear_weight,
    mean_frame_difference,
    vgg_features,
)
from medsynth.losses.feature_matching import feature_matching_loss
from medsynth.models.hrgan import (
    MODALITIES,
    HRGANDiscriminator,
    HRGANGenerator,
    modality_index,
)
from medsynth.settings import setting
from medsynth.training.gan_optimizer import GANOptimizerSettings
from medsynth.training.recipe import SAMPLE_CHUNK, Recipe, register_recipe

DTCR_PATCH = 64
"""Side of the DTCR patches (the paper's 64 x 64), capped by the current stage's resolution."""
VALIDATION_SEQUENCES = 4
"""Held-out latents generated for the "validation" lambda schedule."""
VALIDATION_SEED = 2**31 - 7
REAL_MOTION_DECAY = 0.9
WEIGHT_FREE_FEATURES = "discriminator"
"""The `dtcr_features` choice that needs no weight file (docs/hrgan-dtcr.md, "weight-free fallback")."""
WEIGHT_FREE_ADVICE = (
    f"To train without the file, set dtcr_features={WEIGHT_FREE_FEATURES} (the weight-free DTCR features, "
    f"docs/hrgan-dtcr.md): `--set dtcr_features={WEIGHT_FREE_FEATURES}` with `medsynth train`, or choose "
    f"'{WEIGHT_FREE_FEATURES}' under dtcr_features in the Train widget's recipe settings."
)


@dataclass
class HRGANSettings(GANOptimizerSettings):
    resolution: int = setting(128, "Training side length in pixels (final stage)", choices=(16, 32, 64, 128, 256, 512))
    base_resolution: int = setting(64, "Side length of the first stage; later stages double it", choices=(16, 32, 64))
    frames: int = setting(8, "Frames per training clip (T)", min=2, max=64)
    batch_size: int = setting(4, "Clips per batch and process", min=1, max=256)
    modality: str = setting("US", "Modality the training data is of (the generator's condition)", choices=MODALITIES)
    content_dim: int = setting(64, "Length of the content code shared by all frames", min=4, max=512)
    motion_dim: int = setting(16, "Length of the per-frame motion code", min=2, max=256)
    embed_dim: int = setting(8, "Length of the modality embedding", min=2, max=64)
    g_channels: int = setting(32, "Generator width at the base resolution (x2 per halving, /2 per doubling)", min=4, max=256)
    d_channels: int = setting(32, "Discriminator width at the base resolution", min=4, max=256)
    stage_steps: int = setting(1000, "Steps each stage trains at full strength", min=1, max=10_000_000)
    fade_steps: int = setting(500, "Steps over which a new stage fades in (alpha 0 -> 1)", min=1, max=10_000_000)
    fm_weight: float = setting(1.0, "Weight of discriminator feature matching in the generator loss", min=0.0, max=100.0)
    dtcr_schedule: str = setting("linear", "lambda schedule: linear ramp, adjusted on validation, or off", choices=("linear", "validation", "off"))
    dtcr_weight_start: float = setting(0.1, "DTCR lambda at step 0 (lower bound for 'validation')", min=0.0, max=100.0)
    dtcr_weight_end: float = setting(0.5, "DTCR lambda at the end of the ramp (upper bound for 'validation')", min=0.0, max=100.0)
    dtcr_ramp_steps: int = setting(5000, "Steps over which lambda rises linearly (set to the run's steps)", min=1, max=10_000_000)
    dtcr_validate_every: int = setting(50, "Steps between lambda adjustments of the 'validation' schedule", min=1, max=1_000_000)
    dtcr_features: str = setting("vgg16", "DTCR features: ImageNet VGG (needs its weight file) or the discriminator's", choices=("vgg16", "vgg19", "discriminator"))
    vgg_weights: str = setting("", "Path of the VGG weight file or its folder (empty: the usual places)")


def growth_schedule(step: int, n_stages: int, stage_steps: int, fade_steps: int) -> tuple[int, float]:
    """(stage, alpha) at `step`: stage 0 for `stage_steps`, then per stage `fade_steps` of fade-in and `stage_steps`."""
    if step < stage_steps or n_stages == 1:
        return 0, 1.0
    grown, into = divmod(step - stage_steps, fade_steps + stage_steps)
    stage = grown + 1
    if stage >= n_stages:
        return n_stages - 1, 1.0
    return stage, min(1.0, into / fade_steps)


def real_at_stage(batch: torch.Tensor, side: int, alpha: float) -> torch.Tensor:
    """Real clips ``(B, 1, T, R, R)`` as ``(B, T, 1, side, side)``, blended like the generator during a fade-in.

    Frames are average-pooled to the stage; while a stage fades in, they are mixed with their
    half-resolution version (pooled, then nearest-upsampled), as in Karras et al.
    """
    b, _, t, r, _ = batch.shape
    frames = batch.reshape(b * t, 1, r, r)
    if side != r:
        frames = F.avg_pool2d(frames, r // side)
    if alpha < 1.0:
        coarse = F.interpolate(F.avg_pool2d(frames, 2), scale_factor=2.0, mode="nearest")
        frames = alpha * frames + (1 - alpha) * coarse
    return frames.view(b, t, 1, side, side)


@register_recipe
class HRGANDTCRRecipe(Recipe):
    name = "hrgan-dtcr"
    description = "Progressive multi-scale sequence GAN with temporal consistency regularisation (DTCR), 2D+t"
    data_kind = "sequence"
    settings_cls = HRGANSettings
    readouts = ("dtcr_weight", "fade_alpha", "stage_resolution")

    @classmethod
    def local_defaults(cls) -> tuple[dict[str, Any], str]:
        """The weight-free DTCR features when the default VGG16 weight file is nowhere to be found."""
        from medsynth.weights import REGISTRY, find_weights

        default = cls.settings_cls.__dataclass_fields__["dtcr_features"].default
        if find_weights(default) is not None:
            return {}, ""
        return {"dtcr_features": WEIGHT_FREE_FEATURES}, (
            f"{REGISTRY[default].filename} not found (see `medsynth info`): DTCR uses the weight-free "
            f"dtcr_features={WEIGHT_FREE_FEATURES} (docs/hrgan-dtcr.md)"
        )

    def __init__(self) -> None:
        super().__init__()
        self.step = 0
        self.dtcr_weight = 0.0
        self.real_motion: float | None = None
        self._features: FeatureFn | None = None

    def build(self, settings: HRGANSettings, device: torch.device) -> None:
        if settings.base_resolution > settings.resolution:
            raise SettingsError(
                f"base_resolution {settings.base_resolution} exceeds resolution {settings.resolution}; "
                "lower base_resolution"
            )
        if settings.dtcr_weight_start > settings.dtcr_weight_end:
            raise SettingsError(
                f"dtcr_weight_start {settings.dtcr_weight_start} exceeds dtcr_weight_end {settings.dtcr_weight_end}"
            )
        self.settings, self.device = settings, device
        generator = HRGANGenerator(
            settings.resolution, settings.base_resolution, settings.content_dim, settings.motion_dim,
            settings.g_channels, settings.embed_dim,
        ).to(device)  # fmt: skip
        discriminator = HRGANDiscriminator(settings.resolution, settings.base_resolution, settings.d_channels).to(device)
        self.adopt_gan(generator, discriminator)
        self.dtcr_weight = settings.dtcr_weight_start
        self._features = self._feature_fn(settings, discriminator)

    def _feature_fn(self, settings: HRGANSettings, discriminator: HRGANDiscriminator) -> FeatureFn | None:
        """The DTCR feature network; MissingWeightsError (from `load_vgg`) when VGG is asked for and absent."""
        if settings.dtcr_schedule == "off":
            return None
        if settings.dtcr_features == "discriminator":
            return discriminator.frame_features
        from medsynth.models.vgg import load_vgg

        try:
            vgg = load_vgg(int(settings.dtcr_features[3:]), settings.vgg_weights or None).to(self.device)
        except MissingWeightsError as exc:
            raise MissingWeightsError(f"{exc}\n{WEIGHT_FREE_ADVICE}") from None
        return vgg_features(vgg)

    @property
    def n_stages(self) -> int:
        return len(self.models["generator"].resolutions)

    def schedule(self, step: int) -> tuple[int, float]:
        """(stage, alpha) of the progressive growth at `step`."""
        return growth_schedule(step, self.n_stages, self.settings.stage_steps, self.settings.fade_steps)

    def latents(self, n: int, frames: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Content codes ``(n, Zc)`` and motion noise ``(n, T, Zm)``, drawn on CPU, moved to the device."""
        content = torch.randn(n, self.settings.content_dim, generator=generator)
        noise = torch.randn(n, frames, self.settings.motion_dim, generator=generator)
        return content.to(self.device), noise.to(self.device)

    def modality_tensor(self, n: int, modality: str | None = None) -> torch.Tensor:
        return torch.full((n,), modality_index(modality or self.settings.modality), dtype=torch.long, device=self.device)

    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, float]:
        """One update on real clips ``(B, 1, T, R, R)`` in [-1, 1]."""
        generator, discriminator = self.models["generator"], self.models["discriminator"]
        stage, alpha = self.schedule(step)
        real = real_at_stage(batch, generator.resolutions[stage], alpha)
        n, frames = real.shape[:2]
        modality = self.modality_tensor(n)

        # Discriminator: BCE, real clips -> 1, generated clips -> 0, both through the same augmentation
        # (one transform for all frames of a clip), so that the generator cannot learn it.
        with torch.no_grad():
            fake = generator(*self.latents(n, frames), modality, stage, alpha)
        d_train = self.trainable("discriminator")
        real_logits, _ = d_train(self.augment(real), stage, alpha)
        fake_logits, _ = d_train(self.augment(fake), stage, alpha)
        d_loss_real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
        d_loss_fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        self.optimize("discriminator", d_loss_real + d_loss_fake)

        # Generator: non-saturating BCE + feature matching + lambda * DTCR; the discriminator is frozen.
        discriminator.requires_grad_(False)
        with torch.no_grad():
            _, real_features = discriminator(self.augment(real), stage, alpha)
        fake = self.trainable("generator")(*self.latents(n, frames), modality, stage, alpha)
        logits, fake_features = discriminator(self.augment(fake), stage, alpha)
        g_adv = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        g_fm = feature_matching_loss(real_features, fake_features)
        weight = self._dtcr_weight(step, real, stage, alpha)
        dtcr = dtcr_loss(fake, self._features, DTCR_PATCH) if self._features is not None else fake.new_zeros(())
        g_loss = g_adv + self.settings.fm_weight * g_fm + weight * dtcr
        self.optimize("generator", g_loss)
        discriminator.requires_grad_(True)
        self.ema.update()
        self.step = step + 1

        return {
            "d_loss": (d_loss_real + d_loss_fake).item(),
            "d_loss_real": d_loss_real.item(),
            "d_loss_fake": d_loss_fake.item(),
            "g_loss": g_loss.item(),
            "g_adv": g_adv.item(),
            "g_feature_matching": g_fm.item(),
            "dtcr": dtcr.item(),
            "dtcr_weight": weight,
            "fade_alpha": alpha,
            "stage_resolution": float(generator.resolutions[stage]),
        }

    def _dtcr_weight(self, step: int, real: torch.Tensor, stage: int, alpha: float) -> float:
        """lambda at `step` under the chosen schedule (the "validation" rule keeps state between steps)."""
        s = self.settings
        if s.dtcr_schedule == "off":
            return 0.0
        if s.dtcr_schedule == "linear":
            self.dtcr_weight = linear_weight(step, s.dtcr_weight_start, s.dtcr_weight_end, s.dtcr_ramp_steps)
            return self.dtcr_weight
        motion = mean_frame_difference(real)
        previous = motion if self.real_motion is None else self.real_motion
        self.real_motion = REAL_MOTION_DECAY * previous + (1 - REAL_MOTION_DECAY) * motion
        if step > 0 and step % s.dtcr_validate_every == 0:
            held_out = torch.Generator().manual_seed(VALIDATION_SEED)
            with torch.no_grad():
                fake = self.models["generator"](
                    *self.latents(VALIDATION_SEQUENCES, real.shape[1], held_out),
                    self.modality_tensor(VALIDATION_SEQUENCES), stage, alpha,
                )  # fmt: skip
            self.dtcr_weight = adjusted_weight(
                self.dtcr_weight, mean_frame_difference(fake), self.real_motion, s.dtcr_weight_start, s.dtcr_weight_end
            )
        return self.dtcr_weight

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``(n, 1, T, R, R)`` sequences in [-1, 1] from the EMA generator at the current growth stage.

        Before the last stage has grown in, the output is upsampled (nearest) to the training side.
        """
        assert self.ema is not None, "build() must create the generator EMA"
        content, noise = self.latents(n, self.settings.frames, generator)
        stage, alpha = self.schedule(self.step)
        chunk = max(1, SAMPLE_CHUNK // self.settings.frames)
        out = []
        for c, z in zip(content.split(chunk), noise.split(chunk)):
            frames = self.ema.module(c, z, self.modality_tensor(len(c)), stage, alpha).float()
            if frames.shape[-1] != self.resolution:
                size = (self.resolution, self.resolution)
                frames = F.interpolate(frames.flatten(0, 1), size=size, mode="nearest").view(*frames.shape[:3], *size)
            out.append(frames.transpose(1, 2).cpu())
        return torch.cat(out)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["progress"] = {"step": self.step, "dtcr_weight": self.dtcr_weight, "real_motion": self.real_motion}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        progress = state["progress"]
        self.step = int(progress["step"])
        self.dtcr_weight = float(progress["dtcr_weight"])
        self.real_motion = progress["real_motion"]
