"""The optimiser settings every GAN recipe shares: one Adam each for the generator and the
discriminator, and the exponential moving average of the generator that samples come from.

A recipe's settings class derives from `GANOptimizerSettings` and `Recipe.adopt_gan` reads these
fields from it. A recipe whose method publishes other values redeclares a field with
`medsynth.settings.with_default` (help line and range stay these); forms and ``medsynth recipes``
list the fields after the recipe's own.
"""

from __future__ import annotations

from dataclasses import dataclass

from medsynth.settings import setting


@dataclass
class GANOptimizerSettings:
    lr_g: float = setting(2e-4, "Generator Adam learning rate", min=1e-6, max=1e-1)
    lr_d: float = setting(2e-4, "Discriminator (critic) Adam learning rate", min=1e-6, max=1e-1)
    beta1: float = setting(0.5, "Adam beta1", min=0.0, max=0.999)
    beta2: float = setting(0.999, "Adam beta2", min=0.0, max=0.9999)
    ema_decay: float = setting(0.999, "Decay per step of the generator EMA used for samples", min=0.0, max=0.99999)
