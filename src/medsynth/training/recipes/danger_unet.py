"""`danger-unet`: a U-Net segmenting the danger-zone mask M_danger (1 permissible, 0 forbidden).

Trained on images paired with danger masks painted in the viewer, loaded as label maps, or
bootstrapped by `medsynth.lesions.danger.bootstrap_danger` and corrected; predicts the probability
that a pixel is permissible (`medsynth.lesions.learned.predict_danger`).
"""

from __future__ import annotations

import torch

from medsynth.training.recipe import register_recipe
from medsynth.training.recipes.pixel_map import PixelMapRecipe, PixelMapSettings


@register_recipe
class DangerUNetRecipe(PixelMapRecipe):
    name = "danger-unet"
    description = "U-Net danger-zone segmentation (1 permissible, 0 forbidden) from images paired with masks"
    settings_cls = PixelMapSettings

    def targets(self, raw: torch.Tensor) -> torch.Tensor:
        """Masks ``(B, 1, H, W)`` -> [0, 1]: any non-zero label is permissible; augmentation's -1 fill is forbidden."""
        return raw.clamp(0.0, 1.0)
