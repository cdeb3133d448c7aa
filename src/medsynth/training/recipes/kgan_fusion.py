"""`kgan-fusion`: a GAN that fuses two co-registered images, trained as a teacher or distilled into a small student.

The KGAN paper's fusion task (docs/kgan-fusion.md). The generator ``G`` (`medsynth.models.fusion`) reads
source A and source B (channels 0 and 1 of a batch, each in its own domain's normalisation) and
writes one fused image in A's normalisation. As in DDcGAN (Ma et al. 2020) each source has its own
patch discriminator ``D_A``, ``D_B`` (`medsynth.models.patchgan`), which tells its source from the
fused image, so that the fused image must look like both; the content loss
(`medsynth.losses.fusion`) keeps A's intensities and the stronger edges of the two. With ``BCE`` on
logits (non-saturating for G)::

    L_D     = BCE(D_k(k), 1) + BCE(D_k(G(A, B)), 0)                      for k in A, B, one update each
    L_hard  = content_weight * (mean((F - A)^2) + gradient_weight * mean(|g(F) - max(g(A), g(B))|))
              + BCE(D_A(F), 1) + BCE(D_B(F), 1)                          F = G(A, B)

A teacher (setting ``teacher`` empty) minimises ``L_hard``. A student (``teacher`` = a kgan-fusion
checkpoint; its ``width`` smaller) minimises KGAN's ``L = alpha * L_soft + beta * L_hard`` where,
with the frozen teacher's EMA generator ``T`` and discriminators ``D^T_k`` and the temperature ``tau``::

    L_soft  = pixel_weight * |F - T(A, B)|_1
              + soft_weight * sum_k tau^2 KL(sigma(D^T_k(T(A, B)) / tau) || sigma(D^T_k(F) / tau))

the softened-probability term of `medsynth.training.recipes.distill.softened_kl`, per patch logit.
The student reads its data in the teacher's two intensity maps (`domain_normalizations`), so its
fused images are in the teacher's units; its checkpoint generates without the teacher file.

Augmentation, when the run augments, is one random flip, rotation, scaling and shift for A and B
together (a transformed pair is still a co-registered pair, and mirror images are valid real data
here because nothing is drawn from noise); the paper trained with random flips.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from medsynth.data.augment import augment_batch
from medsynth.data.normalization import Normalization
from medsynth.errors import SettingsError
from medsynth.losses.fusion import content_terms
from medsynth.models.fusion import FusionGenerator
from medsynth.models.patchgan import PatchDiscriminator
from medsynth.settings import setting, with_default
from medsynth.training.checkpoint import Checkpoint
from medsynth.training.distill_settings import DistillSettings
from medsynth.training.gan_optimizer import GANOptimizerSettings
from medsynth.training.generate import load_recipe
from medsynth.training.recipe import TranslationRecipe, register_recipe
from medsynth.training.recipes.distill import read_teacher, softened_kl

SOURCES = ("a", "b")
"""The two sources, each with its discriminator ``discriminator_<k>`` (batch channel 0 and 1)."""


@dataclass
class KGANFusionSettings(GANOptimizerSettings):
    teacher: str = setting(
        "", "Checkpoint of a trained kgan-fusion teacher to distil into this (smaller) model; empty: train a teacher"
    )
    width: int = setting(
        32,
        "Generator width at full resolution, a multiple of 4 (doubles per halving); a student 12 for a 32-wide "
        "teacher (14% of its parameters)",
        min=4,
        max=256,
    )
    depth: int = setting(3, "Halvings in the generator's U-Net", min=1, max=5)
    resolution: int = setting(128, "Training slice side length in pixels", choices=(32, 64, 128, 256))
    batch_size: int = setting(8, "Slice pairs per batch and process", min=1, max=1024)
    d_channels: int = setting(16, "Width of each source's patch discriminator", min=4, max=256)
    content_weight: float = setting(
        10.0,
        "Weight of the content loss (A's intensities, the stronger edges) beside the adversarial losses",
        min=0.0,
        max=1000.0,
    )
    gradient_weight: float = setting(5.0, "Weight of the edge term within the content loss", min=0.0, max=1000.0)
    alpha: float = with_default(DistillSettings, "alpha", 1.0, "a student only")
    beta: float = with_default(DistillSettings, "beta", 1.0, "a student only: the teacher's own loss")
    temperature: float = with_default(DistillSettings, "temperature", 4.0, "a student only")
    pixel_weight: float = with_default(DistillSettings, "pixel_weight", 10.0, "a student only")
    soft_weight: float = with_default(
        DistillSettings, "soft_weight", 1.0, "a student only: summed over both teacher discriminators"
    )


def teacher_checkpoint(settings: KGANFusionSettings) -> Checkpoint | None:
    """The teacher's checkpoint named by the settings, or None for a teacher run; InputError for a bad file."""
    if not settings.teacher:
        return None
    return read_teacher(settings.teacher, (KGANFusionRecipe.name,), "a kgan-fusion student learns from")


@register_recipe
class KGANFusionRecipe(TranslationRecipe):
    name = "kgan-fusion"
    description = (
        "KGAN fusion: a U-Net fusing two co-registered images (DDcGAN-style losses, a discriminator per source), "
        "as a teacher or a distilled student"
    )
    settings_cls = KGANFusionSettings
    registered = True
    inputs = 2
    directions = {"fuse": "a"}

    def __init__(self) -> None:
        super().__init__()
        self._training = False
        """Set by `prepare`: only a training run loads the teacher."""
        self._teacher: dict[str, torch.nn.Module] | None = None

    @classmethod
    def check_settings(cls, settings: KGANFusionSettings) -> None:
        if settings.width % 4:
            choice = max(4, settings.width // 4 * 4)
            raise SettingsError(f"width={settings.width} must be a multiple of 4 (group norm); choose {choice}")
        teacher_checkpoint(settings)

    @classmethod
    def domain_normalizations(cls, settings: KGANFusionSettings) -> tuple[Normalization, Normalization] | None:
        checkpoint = teacher_checkpoint(settings)
        return None if checkpoint is None else (checkpoint.normalization, checkpoint.normalization_b)

    def prepare(self, dataset: Any) -> None:
        super().prepare(dataset)
        self._training = True

    def build(self, settings: KGANFusionSettings, device: torch.device) -> None:
        """The student or teacher models; the frozen teacher too when a student trains (not when it is loaded)."""
        self.settings, self.device = settings, device
        generator = FusionGenerator(settings.width, settings.depth).to(device)
        discriminators = {f"discriminator_{k}": PatchDiscriminator(settings.d_channels).to(device) for k in SOURCES}
        self.adopt_gan(generator, discriminators["discriminator_a"], "discriminator_a")
        self.models["discriminator_b"] = discriminators["discriminator_b"]
        self.optimizers["discriminator_b"] = torch.optim.Adam(
            discriminators["discriminator_b"].parameters(), lr=settings.lr_d, betas=(settings.beta1, settings.beta2)
        )
        self._teacher = self._frozen_teacher() if self._training else None

    def _frozen_teacher(self) -> dict[str, torch.nn.Module] | None:
        """The frozen teacher's EMA generator and discriminators, or None for a teacher run."""
        checkpoint = teacher_checkpoint(self.settings)
        if checkpoint is None:
            return None
        teacher = load_recipe(checkpoint, str(self.device))
        models = {"generator": teacher.ema.module}
        models.update({f"discriminator_{k}": teacher.models[f"discriminator_{k}"] for k in SOURCES})
        return {name: model.requires_grad_(False).eval() for name, model in models.items()}

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """Both channels of ``(B, 2, H, W)`` under one transform, flips included, when the run augments."""
        return augment_batch(images) if self.augmenting else images

    @torch.no_grad()
    def translate(self, images: torch.Tensor, direction: str) -> torch.Tensor:
        """``(N, 2, S, S)`` sources A and B -> ``(N, 1, S, S)`` fused, in A's normalisation, by the EMA generator."""
        return self.ema.module(images.to(self.device))

    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, float]:
        """One update of both discriminators and the generator on ``(B, 2, S, S)`` pairs (A, B)."""
        s = self.settings
        batch = self.augment(batch)
        sources = {"a": batch[:, :1], "b": batch[:, 1:]}
        losses: dict[str, float] = {}

        # Discriminators: each source's real slices -> 1, the fused slices -> 0.
        with torch.no_grad():
            fused = self.models["generator"](batch)
        for k in SOURCES:
            d_train = self.trainable(f"discriminator_{k}")
            d_real, d_fake = _bce(d_train(sources[k]), 1.0), _bce(d_train(fused), 0.0)
            self.optimize(f"discriminator_{k}", d_real + d_fake)
            losses[f"d_loss_{k}"] = (d_real + d_fake).item()

        # Generator: content and adversarial terms against the real sources; a student adds the teacher's soft terms.
        for k in SOURCES:
            self.models[f"discriminator_{k}"].requires_grad_(False)
        fused = self.trainable("generator")(batch)
        content = content_terms(fused, sources["a"], sources["b"])
        adversarial = {k: _bce(self.models[f"discriminator_{k}"](fused), 1.0) for k in SOURCES}
        hard = s.content_weight * (content["intensity"] + s.gradient_weight * content["gradient"])
        hard = hard + adversarial["a"] + adversarial["b"]
        terms = {**content, **{f"g_adv_{k}": value for k, value in adversarial.items()}}
        if self._teacher is None:
            g_loss = hard
        else:
            soft_terms = self._soft_terms(batch, fused)
            soft = s.pixel_weight * soft_terms["pixel"] + s.soft_weight * soft_terms["soft_discriminator"]
            g_loss = s.alpha * soft + s.beta * hard
            terms.update(soft_terms, soft=soft, hard=hard)
        self.optimize("generator", g_loss)
        for k in SOURCES:
            self.models[f"discriminator_{k}"].requires_grad_(True)
        self.ema.update()
        return {**losses, "g_loss": g_loss.item(), **{name: value.item() for name, value in terms.items()}}

    def _soft_terms(self, batch: torch.Tensor, fused: torch.Tensor) -> dict[str, torch.Tensor]:
        """The student's soft terms: pixel L1 to the teacher's fused image, and the softened discriminator KL."""
        teacher = self._teacher
        with torch.no_grad():
            target = teacher["generator"](batch)
            teacher_logits = {k: teacher[f"discriminator_{k}"](target) for k in SOURCES}
        kl = sum(
            softened_kl(teacher_logits[k], teacher[f"discriminator_{k}"](fused), self.settings.temperature)
            for k in SOURCES
        )
        return {"pixel": F.l1_loss(fused, target), "soft_discriminator": kl}


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))
