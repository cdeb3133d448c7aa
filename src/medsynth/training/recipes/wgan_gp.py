"""`wgan-gp`: the WGAN-GP baseline (Gulrajani et al., 2017): critic with gradient penalty, n_critic steps."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medsynth.models.dcgan import DCGANGenerator
from medsynth.models.wgan_gp import Critic, gradient_penalty
from medsynth.settings import setting, with_default
from medsynth.training.gan_optimizer import GANOptimizerSettings
from medsynth.training.recipe import LatentGANRecipe, register_recipe


@dataclass
class WGANGPSettings(GANOptimizerSettings):
    resolution: int = setting(64, "Training image side length in pixels", choices=(64, 128))
    batch_size: int = setting(16, "Real images per critic batch and process", min=1, max=1024)
    latent_dim: int = setting(128, "Length of the generator's latent vector", min=8, max=1024)
    g_channels: int = setting(16, "Generator width at full resolution (doubles at each halving)", min=4, max=256)
    d_channels: int = setting(16, "Critic width at full resolution (doubles at each halving)", min=4, max=256)
    critic_norm: str = setting(
        "layer", "Critic normalisation (never batch norm with a gradient penalty)", choices=("layer", "none")
    )
    n_critic: int = setting(5, "Critic updates per generator update", min=1, max=20)
    gp_lambda: float = setting(10.0, "Weight of the gradient penalty", min=0.0, max=1000.0)
    lr_g: float = with_default(GANOptimizerSettings, "lr_g", 1e-4, "paper: 1e-4")
    lr_d: float = with_default(GANOptimizerSettings, "lr_d", 1e-4, "paper: 1e-4")
    beta1: float = with_default(GANOptimizerSettings, "beta1", 0.0, "paper: 0")
    beta2: float = with_default(GANOptimizerSettings, "beta2", 0.9, "paper: 0.9")


@register_recipe
class WGANGPRecipe(LatentGANRecipe):
    name = "wgan-gp"
    description = "WGAN-GP baseline (Gulrajani et al. 2017): critic with gradient penalty, 5 critic steps"
    data_kind = "image2d"
    settings_cls = WGANGPSettings

    def build(self, settings: WGANGPSettings, device: torch.device) -> None:
        self.settings, self.device = settings, device
        self.batches_per_step = settings.n_critic
        generator = DCGANGenerator(settings.resolution, settings.latent_dim, settings.g_channels).to(device)
        critic = Critic(settings.resolution, settings.d_channels, norm=settings.critic_norm).to(device)
        self.adopt_gan(generator, critic, discriminator_name="critic")

    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, float]:
        generator, critic = self.models["generator"], self.models["critic"]
        latent_dim = self.settings.latent_dim
        totals = {"critic_loss": 0.0, "wasserstein": 0.0, "gp": 0.0}

        # Critic: n_critic updates, each on its own real batch, maximising D(real) - D(fake) - lambda * GP.
        critic_train = self.trainable("critic")
        for real in batch.chunk(self.settings.n_critic):
            with torch.no_grad():
                fake = generator(torch.randn(real.shape[0], latent_dim, device=self.device))
            real, fake = self.augment(real), self.augment(fake)  # alike, so that the generator cannot learn it
            wasserstein = critic_train(real).mean() - critic_train(fake).mean()
            gp = gradient_penalty(critic_train, real, fake)
            critic_loss = -wasserstein + self.settings.gp_lambda * gp
            self.optimize("critic", critic_loss)
            totals["critic_loss"] += critic_loss.item()
            totals["wasserstein"] += wasserstein.item()
            totals["gp"] += gp.item()

        # Generator: minimise -D(G(z)) with the critic frozen.
        critic.requires_grad_(False)
        fake = self.trainable("generator")(torch.randn(self.batch_size, latent_dim, device=self.device))
        g_loss = -critic(self.augment(fake)).mean()
        self.optimize("generator", g_loss)
        critic.requires_grad_(True)
        self.ema.update()

        losses = {name: total / self.settings.n_critic for name, total in totals.items()}
        losses["g_loss"] = g_loss.item()
        return losses
