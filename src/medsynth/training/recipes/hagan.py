"""`hagan`: Hybrid Augmented GAN for little data (after Ju et al., "HAGAN", 2024); docs/hagan.md explains every choice.

Four components, each one setting, so that the ablation is one flag each:

1. ``diffaugment``: DiffAugment (`medsynth.data.diffaugment`) of real and generated images alike,
   before the discriminator, in both steps (when the run augments: ``TrainConfig.augment``).
2. ``attnmix``: AttnMix consistency (`medsynth.losses.attnmix`) on real/generated mixes.
3. ``hierarchical``: the U-Net discriminator's per-pixel decoder (`medsynth.models.unet_discriminator`)
   next to its image-level encoder output, with a bi-level adversarial loss; off, the encoder alone.
4. ``reverse_skip``: running statistics of the discriminator's encoder features modulate the
   generator's stages of the same size (`medsynth.models.hagan`).

Losses (non-saturating BCE on logits; ``T`` the augmentation, ``L`` the finest local logits: per
pixel with the decoder, per 4x4 bottleneck cell without):

    D: BCE(D_img(T(x)), 1) + BCE(D_img(T(G(z))), 0) + pixel_weight * [BCE(D_pix(T(x)), 1) + BCE(D_pix(T(G(z))), 0)]
       + on mixing steps: mix_weight * [BCE(D_img(m), 0) + BCE(L(m), M)]
                          + consistency_weight * ||L(m) - (M L(T(x)) + (1 - M) L(T(G(z))))||^2,
       m = M T(x) + (1 - M) T(G(z))
    G: BCE(D_img(T(G(z))), 1) + pixel_weight * BCE(D_pix(T(G(z))), 1)

A step mixes with probability ``mix_probability``, ramped up linearly over ``mix_warmup_steps``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medsynth.data.diffaugment import POLICIES, diff_augment
from medsynth.losses.attnmix import MIX_MODES, box_masks, consistency_loss, mix, mix_loss
from medsynth.models.hagan import HAGANGenerator
from medsynth.models.unet_discriminator import DiscriminatorOutput, UNetDiscriminator
from medsynth.settings import setting
from medsynth.training.gan_optimizer import GANOptimizerSettings
from medsynth.training.recipe import LatentGANRecipe, register_recipe


@dataclass
class HAGANSettings(GANOptimizerSettings):
    resolution: int = setting(64, "Training image side length in pixels", choices=(64, 128, 256))
    batch_size: int = setting(16, "Real images per batch and process", min=1, max=1024)
    latent_dim: int = setting(128, "Length of the generator's latent vector", min=8, max=1024)
    g_channels: int = setting(16, "Generator width at half resolution (doubles at each halving)", min=4, max=256)
    d_channels: int = setting(16, "Discriminator width at half resolution (doubles at each halving)", min=4, max=256)
    diffaugment: bool = setting(
        True, "Component 1: DiffAugment real and generated images before the discriminator (when the run augments)"
    )
    augment_policy: str = setting(POLICIES[0], "DiffAugment transforms", choices=POLICIES)
    attnmix: bool = setting(True, "Component 2: AttnMix consistency regularisation of the discriminator")
    mix_mode: str = setting(
        "attention", "Mixing box placement: at the discriminator's saliency (attention) or at random (cutmix)",
        choices=MIX_MODES,
    )
    mix_probability: float = setting(0.5, "Share of steps with AttnMix terms, after the warm-up", min=0.0, max=1.0)
    mix_warmup_steps: int = setting(500, "Steps over which the mix probability rises from 0", min=0, max=10_000_000)
    consistency_weight: float = setting(1.0, "Weight of the AttnMix consistency loss", min=0.0, max=1000.0)
    mix_weight: float = setting(1.0, "Weight of the adversarial loss on mixed images", min=0.0, max=1000.0)
    hierarchical: bool = setting(
        True, "Component 3: U-Net discriminator with a per-pixel decoder output beside the image-level one"
    )
    pixel_weight: float = setting(1.0, "Weight of the per-pixel adversarial loss", min=0.0, max=1000.0)
    reverse_skip: bool = setting(
        True, "Component 4: discriminator feature statistics modulate the generator (reverse skip connection)"
    )


@register_recipe
class HAGANRecipe(LatentGANRecipe):
    name = "hagan"
    description = "HAGAN: DiffAugment, AttnMix consistency, U-Net discriminator, reverse skip; for little data"
    data_kind = "image2d"
    settings_cls = HAGANSettings

    def build(self, settings: HAGANSettings, device: torch.device) -> None:
        self.settings, self.device = settings, device
        discriminator = UNetDiscriminator(settings.resolution, settings.d_channels, decoder=settings.hierarchical)
        widths = discriminator.widths[::-1] if settings.reverse_skip else None  # at 4, 8, ..., R/2
        generator = HAGANGenerator(settings.resolution, settings.latent_dim, settings.g_channels, widths)
        self.adopt_gan(generator.to(device), discriminator.to(device))

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """DiffAugment with the recipe's policy when the run augments and ``diffaugment`` is on."""
        if self.augmenting and self.settings.diffaugment:
            return diff_augment(images, self.settings.augment_policy)
        return images

    def mix_probability(self, step: int) -> float:
        s = self.settings
        if not s.attnmix:
            return 0.0
        return s.mix_probability * min(1.0, step / s.mix_warmup_steps) if s.mix_warmup_steps else s.mix_probability

    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, float]:
        s = self.settings
        generator, discriminator = self.models["generator"], self.models["discriminator"]
        n = batch.shape[0]
        mixing = bool(torch.rand(()) < self.mix_probability(step))  # drawn every step: resumes stay exact

        # Discriminator: bi-level BCE on augmented real and generated images, plus AttnMix on mixing steps.
        with torch.no_grad():
            fake = generator(torch.randn(n, s.latent_dim, device=self.device))
        d_train = self.trainable("discriminator")
        real_in, fake_in = self.augment(batch), self.augment(fake)
        real_out, fake_out = d_train(real_in), d_train(fake_in)
        losses = {
            "d_image_real": _bce(real_out.image, 1.0),
            "d_image_fake": _bce(fake_out.image, 0.0),
        }
        if real_out.pixels is not None:
            losses["d_pixel_real"] = _bce(real_out.pixels, 1.0)
            losses["d_pixel_fake"] = _bce(fake_out.pixels, 0.0)
        if mixing:
            losses.update(self._attnmix(d_train, real_in, fake_in, real_out, fake_out))
        d_loss = sum(self._weighted(losses).values())
        self.optimize("discriminator", d_loss)
        generator.observe(real_out.features[::-1], fake_out.features[::-1])

        # Generator: bi-level non-saturating loss through the same augmentation; the discriminator is frozen.
        discriminator.requires_grad_(False)
        fake = self.trainable("generator")(torch.randn(n, s.latent_dim, device=self.device))
        out = discriminator(self.augment(fake))
        losses["g_image"] = _bce(out.image, 1.0)
        g_loss = losses["g_image"]
        if out.pixels is not None:
            losses["g_pixel"] = _bce(out.pixels, 1.0)
            g_loss = g_loss + s.pixel_weight * losses["g_pixel"]
        self.optimize("generator", g_loss)
        discriminator.requires_grad_(True)
        self.ema.update()

        return {"d_loss": d_loss.item(), "g_loss": g_loss.item(), **{k: v.item() for k, v in losses.items()}}

    def _attnmix(
        self,
        d_train: torch.nn.Module,
        real_in: torch.Tensor,
        fake_in: torch.Tensor,
        real_out: DiscriminatorOutput,
        fake_out: DiscriminatorOutput,
    ) -> dict[str, torch.Tensor]:
        """The mix and consistency terms of one discriminator step, on the step's augmented images."""
        mask = box_masks(
            real_in.shape[0], self.resolution, self.settings.mix_mode, real_out.local, fake_out.local
        ).to(self.device)
        mixed_out = d_train(mix(real_in, fake_in, mask))
        return {
            "d_mix": mix_loss(mixed_out.image, mixed_out.local, mask),
            "d_consistency": consistency_loss(mixed_out.local, real_out.local, fake_out.local, mask),
        }

    def _weighted(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        s = self.settings
        weights = {"d_pixel_real": s.pixel_weight, "d_pixel_fake": s.pixel_weight, "d_mix": s.mix_weight,
                   "d_consistency": s.consistency_weight}  # fmt: skip
        return {name: weights.get(name, 1.0) * value for name, value in losses.items()}


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))
