"""`lesion-heatmap`: a fully convolutional model of where lesions lie, the learned location prior C_loc.

Trained on images paired with historical lesion label maps: the target of each slice is a Gaussian
blob (peak 1, standard deviation `sigma` of the side) at the centroid of every lesion, as in
keypoint heatmap regression. Touching lesions count as one. The prediction
(`medsynth.lesions.learned.predict_heatmap`) replaces the kernel-density heatmap of
`medsynth.lesions.location` when enough annotations exist.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medsynth.data.geometry import lesion_centroids
from medsynth.settings import setting
from medsynth.training.recipe import register_recipe
from medsynth.training.recipes.pixel_map import PixelMapRecipe, PixelMapSettings


@dataclass
class LesionHeatmapSettings(PixelMapSettings):
    sigma: float = setting(
        0.04,
        "Standard deviation of the target blobs, as a fraction of the side",
        min=0.005,
        max=0.5,
    )


@register_recipe
class LesionHeatmapRecipe(PixelMapRecipe):
    name = "lesion-heatmap"
    description = (
        "U-Net lesion location heatmap (Gaussian blobs at lesion centroids) from images paired with label maps"
    )
    settings_cls = LesionHeatmapSettings

    def targets(self, raw: torch.Tensor) -> torch.Tensor:
        """Label maps ``(B, 1, H, W)`` -> blobs ``(B, 1, H, W)``: the maximum of the lesions' Gaussians."""
        masks = (raw[:, 0] > 0.5).cpu().numpy()
        return torch.stack([self._blobs(mask) for mask in masks])[:, None].to(raw.device)

    def _blobs(self, mask: np.ndarray) -> torch.Tensor:
        h, w = mask.shape
        centres = torch.as_tensor(lesion_centroids(mask), dtype=torch.float32)
        if len(centres) == 0:
            return torch.zeros(h, w)
        sigma = self.settings.sigma * max(h, w)
        rows = (torch.arange(h, dtype=torch.float32)[None, :] - centres[:, :1]) ** 2
        cols = (torch.arange(w, dtype=torch.float32)[None, :] - centres[:, 1:]) ** 2
        squared = rows[:, :, None] + cols[:, None, :]
        return torch.exp(-squared / (2.0 * sigma**2)).amax(dim=0)
