"""`dcgan`: the DCGAN baseline (Radford et al., 2016) with the non-saturating BCE loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medsynth.models.dcgan import DCGANDiscriminator, DCGANGenerator
from medsynth.settings import setting, with_default
from medsynth.training.gan_optimizer import GANOptimizerSettings
from medsynth.training.recipe import LatentGANRecipe, register_recipe


@dataclass
class DCGANSettings(GANOptimizerSettings):
    resolution: int = setting(64, "Training image side length in pixels", choices=(64, 128))
    batch_size: int = setting(16, "Real images per batch and process", min=1, max=1024)
    latent_dim: int = setting(100, "Length of the generator's latent vector", min=8, max=1024)
    g_channels: int = setting(16, "Generator width at full resolution (doubles at each halving)", min=4, max=256)
    d_channels: int = setting(16, "Discriminator width at full resolution (doubles at each halving)", min=4, max=256)
    lr_d: float = with_default(
        GANOptimizerSettings,
        "lr_d",
        5e-5,
        "paper: 2e-4; lower here because on a few hundred slices the discriminator otherwise wins within about 100 steps",
    )


@register_recipe
class DCGANRecipe(LatentGANRecipe):
    name = "dcgan"
    description = "DCGAN baseline (Radford et al. 2016): transposed-conv generator, BCE loss"
    data_kind = "image2d"
    settings_cls = DCGANSettings

    def build(self, settings: DCGANSettings, device: torch.device) -> None:
        self.settings, self.device = settings, device
        generator = DCGANGenerator(settings.resolution, settings.latent_dim, settings.g_channels).to(device)
        discriminator = DCGANDiscriminator(settings.resolution, settings.d_channels, norm="batch").to(device)
        self.adopt_gan(generator, discriminator)

    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, float]:
        generator, discriminator = self.models["generator"], self.models["discriminator"]
        n = batch.shape[0]

        # Discriminator: real images -> 1, generated images -> 0, on separate batches as in the paper;
        # both pass through the same augmentation, so that the generator cannot learn it.
        with torch.no_grad():
            fake = generator(torch.randn(n, self.settings.latent_dim, device=self.device))
        d_train = self.trainable("discriminator")
        real_logits, fake_logits = d_train(self.augment(batch)), d_train(self.augment(fake))
        d_loss_real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
        d_loss_fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        self.optimize("discriminator", d_loss_real + d_loss_fake)

        # Generator: non-saturating loss, -log D(G(z)); the discriminator's weights are frozen meanwhile.
        discriminator.requires_grad_(False)
        fake = self.trainable("generator")(torch.randn(n, self.settings.latent_dim, device=self.device))
        logits = discriminator(self.augment(fake))
        g_loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        self.optimize("generator", g_loss)
        discriminator.requires_grad_(True)
        self.ema.update()

        return {
            "d_loss": (d_loss_real + d_loss_fake).item(),
            "d_loss_real": d_loss_real.item(),
            "d_loss_fake": d_loss_fake.item(),
            "g_loss": g_loss.item(),
        }
