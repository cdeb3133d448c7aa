"""The settings of the `distill` recipe (`medsynth.training.recipes.distill`), apart from it so that the
command line lists them as `medsynth distill` flags without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from medsynth.settings import setting, with_default
from medsynth.training.gan_optimizer import GANOptimizerSettings

TEACHER_RECIPES = ("dcgan", "wgan-gp", "hagan")
"""Recipes whose checkpoints can teach: latent-to-image generators with batch-normalised stages."""
PERCEPTUAL_FEATURES = ("teacher-discriminator", "vgg16", "off")


@dataclass
class DistillSettings(GANOptimizerSettings):
    teacher: str = setting("", "Checkpoint of the trained teacher: a dcgan, wgan-gp or hagan image model")
    width_factor: float = setting(
        0.25, "Student widths as a fraction of the teacher's (parameters scale about with its square)", min=0.05, max=0.5
    )
    batch_size: int = setting(16, "Real images per batch and process", min=1, max=1024)
    alpha: float = setting(1.0, "Weight of the soft loss L_soft (learning from the teacher)", min=0.0, max=1000.0)
    beta: float = setting(1.0, "Weight of the hard loss L_hard (adversarial, against real data)", min=0.0, max=1000.0)
    temperature: float = setting(
        4.0, "Temperature T softening the teacher discriminator's probabilities", min=0.1, max=100.0
    )
    pixel_weight: float = setting(1.0, "Weight of the pixel L1 between student and teacher images", min=0.0, max=1000.0)
    perceptual: str = setting(
        "teacher-discriminator",
        "Perceptual features: the teacher discriminator's (no weight file), VGG16's (weight file), or none",
        choices=PERCEPTUAL_FEATURES,
    )
    perceptual_weight: float = setting(0.1, "Weight of the perceptual distance", min=0.0, max=1000.0)
    vgg_weights: str = setting("", "Path of the VGG16 weight file or its folder (empty: the usual places)")
    feature_weight: float = setting(
        1.0, "Weight of the feature distillation on matched generator stage maps", min=0.0, max=1000.0
    )
    soft_weight: float = setting(
        1.0, "Weight of the temperature-softened teacher discriminator KL", min=0.0, max=1000.0
    )
    lr_g: float = with_default(
        GANOptimizerSettings, "lr_g", 1e-3, "higher than a GAN's: the student mostly regresses onto its teacher"
    )
    # lr_d keeps the shared 2e-4: with 5e-5 and beta 0.1 students lagged (docs/benchmarks.md, "distill" tuning).
