"""The shared part of the paired recipes: a U-Net trained to predict a per-pixel map of its image.

Not a recipe itself (nothing here is registered): ``danger-unet`` and ``lesion-heatmap`` subclass
`PixelMapRecipe` and say how a batch's raw target channel becomes per-pixel probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medsynth.data.augment import augment_batch
from medsynth.errors import InputError, SettingsError
from medsynth.models.unet import UNet
from medsynth.settings import setting
from medsynth.training.recipe import Recipe


@dataclass
class PixelMapSettings:
    resolution: int = setting(64, "Training slice side length in pixels", choices=(32, 64, 128, 256))
    batch_size: int = setting(8, "Slices per batch and process", min=1, max=1024)
    width: int = setting(
        16,
        "U-Net width at full resolution, a multiple of 4 (doubles at each halving)",
        min=4,
        max=256,
    )
    depth: int = setting(3, "Number of halvings in the U-Net", min=1, max=5)
    lr: float = setting(1e-3, "Adam learning rate", min=1e-6, max=1e-1)


class PixelMapRecipe(Recipe):
    """A U-Net ``"unet"`` on ``(B, 2, H, W)`` batches (image, raw target) with per-pixel BCE on logits."""

    data_kind = "paired"

    def build(self, settings: PixelMapSettings, device: torch.device) -> None:
        if settings.width % 4:
            raise SettingsError(f"width={settings.width} must be a multiple of 4; choose {settings.width // 4 * 4}")
        self.settings, self.device = settings, device
        unet = UNet(1, 1, settings.width, settings.depth).to(device)
        self.models = {"unet": unet}
        self.optimizers = {"unet": torch.optim.Adam(unet.parameters(), lr=settings.lr)}
        self.ema = None
        self._preview: torch.Tensor | None = None

    def targets(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw target channel ``(B, 1, H, W)`` (augmented) -> per-pixel probabilities ``(B, 1, H, W)`` in [0, 1]."""
        raise NotImplementedError

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """Image and target channels of ``(B, 2, H, W)`` under one transform, flips included, when the run augments.

        Nothing is generated here: a transformed image with its transformed map is a valid training
        pair, so real data alone is augmented, mirror images too.
        """
        return augment_batch(images) if self.augmenting else images

    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, float]:
        """One update on ``(B, 2, H, W)``: channel 0 images in [-1, 1], channel 1 the raw targets."""
        batch = self.augment(batch)
        images, target = batch[:, :1], self.targets(batch[:, 1:].float())
        logits = self.trainable("unet")(images)
        loss = F.binary_cross_entropy_with_logits(logits.float(), target)
        self.optimize("unet", loss)
        self._preview = images.detach()
        return {"bce": loss.item()}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Previews ``(n, 1, H, W)``: predicted probabilities as 2p - 1 on the latest batch's images (cycled).

        These models map images to maps and draw nothing; outside training use
        `medsynth.lesions.learned` to predict on an image.
        """
        if self._preview is None:
            raise InputError(
                f"recipe {self.name!r} predicts maps of given images and cannot generate images; use "
                "medsynth.lesions.learned.predict_danger or predict_heatmap with this checkpoint"
            )
        images = self._preview[torch.arange(n) % len(self._preview)]
        return (2.0 * torch.sigmoid(self.models["unet"](images).float()) - 1.0).cpu()
