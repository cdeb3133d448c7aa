"""`distill`: a small, fast generator distilled from a trained image GAN (the teacher-to-student transfer of KGAN).

docs/distill.md explains the choices. The student is a generator of the teacher's own recipe and
architecture with every width multiplied by ``width_factor`` (parameters scale about with its
square), trained beside a discriminator of the teacher's discriminator architecture at the same
factor. With one latent ``z`` for student ``S`` and teacher ``T`` (the teacher's EMA generator,
frozen), ``D_T`` the teacher's discriminator (frozen), ``D_S`` the student's, ``aug`` the run's
augmentation and ``sigma`` the logistic function::

    L_G    = alpha * L_soft + beta * L_hard
    L_soft = pixel_weight * |S(z) - T(z)|_1 + perceptual_weight * P(S(z), T(z))
             + feature_weight * mean_l |A_l(S_l(z)) - T_l(z)|^2
             + soft_weight * tau^2 * KL(sigma(D_T(T(z)) / tau) || sigma(D_T(S(z)) / tau))
    L_hard = BCE(D_S(aug(S(z))), 1)                                (non-saturating)
    L_D    = BCE(D_S(aug(x)), 1) + BCE(D_S(aug(S(z'))), 0)         (x: real images)

``S_l``, ``T_l`` are the generators' stage maps (the outputs of their batch-normalised stages' ReLUs)
and ``A_l`` a 1x1 convolution from the student's width to the teacher's, trained with the student.
``P`` is the LPIPS-style distance (`medsynth.losses.vqperceptual.feature_distance`) of the teacher
discriminator's stage activations (weight-free: a trained, frozen feature network), of VGG16's
(weight file), or off. The KL is that of the two-class (real, fake) probabilities of one logit,
softened by the temperature ``tau`` and scaled by ``tau^2`` so that its gradients keep their size as
``tau`` changes (Hinton et al. 2015). The hard loss is the non-saturating BCE whatever the teacher's
own adversarial loss, with one discriminator update per step.

Real images are normalised with the teacher's map and sized at its resolution (the trainer asks
`data_normalization` and `data_resolution`), so the student draws in the teacher's units. The
student's checkpoint stores its recipe and settings (``state["student"]``) and generates without the
teacher file.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medsynth.data.normalization import Normalization
from medsynth.errors import InputError
from medsynth.losses.dtcr import vgg_features
from medsynth.losses.vqperceptual import LPIPS_LAYERS, Distance, feature_distance, features_distance
from medsynth.models.unet_discriminator import DiscriminatorOutput
from medsynth.settings import describe, parse, to_dict
from medsynth.training.checkpoint import Checkpoint, load_checkpoint
from medsynth.training.distill_settings import TEACHER_RECIPES, DistillSettings
from medsynth.training.generate import load_recipe
from medsynth.training.recipe import LatentGANRecipe, get_recipe, register_recipe

SCALED_WIDTHS = ("g_channels", "d_channels")
"""The teacher's settings that the width factor scales to make the student."""


def teacher_checkpoint(settings: DistillSettings) -> Checkpoint:
    """The teacher's checkpoint; InputError naming the file (or the empty setting) and the fix."""
    if not settings.teacher:
        raise InputError(
            "setting teacher is empty: give the checkpoint of a trained image GAN "
            f"({', '.join(TEACHER_RECIPES)}), e.g. --teacher runs/brain/checkpoint-0003000.safetensors"
        )
    return read_teacher(settings.teacher, TEACHER_RECIPES, "distillation takes the 2D image GANs")


def read_teacher(teacher: str, recipes: tuple[str, ...], refusal: str) -> Checkpoint:
    """The checkpoint that a recipe's `teacher` setting names, read once per run (`_load_teacher`).

    InputError naming the file and the fix when it is missing or was made by a recipe not in `recipes`;
    `refusal` says what the student takes, e.g. ``"distillation takes the 2D image GANs"``.
    """
    path = Path(teacher).expanduser()
    if not path.is_file():
        raise InputError(
            f"teacher checkpoint {path} does not exist or is not a file: give the .safetensors checkpoint of a "
            f"trained {' / '.join(recipes)} run"
        )
    stat = path.stat()
    checkpoint = _load_teacher(path.resolve(), stat.st_mtime_ns, stat.st_size)
    if checkpoint.recipe not in recipes:
        raise InputError(
            f"teacher checkpoint {path} is a {checkpoint.recipe!r} model; {refusal} "
            f"{', '.join(recipes)}: train one of those first and give its checkpoint"
        )
    return checkpoint


@functools.lru_cache(maxsize=1)
def _load_teacher(path: Path, mtime_ns: int, size: int) -> Checkpoint:
    """The checkpoint at `path`, read once per run: the trainer asks the recipe's hooks for it several times.

    Keyed by the file's modification time and size too, so a teacher file replaced on disk is read again.
    """
    return load_checkpoint(path)


def student_settings(teacher: Checkpoint, width_factor: float) -> Any:
    """The teacher recipe's settings with its widths times `width_factor`; InputError when a width gets too small."""
    settings_cls = get_recipe(teacher.recipe).settings_cls
    smallest = {info.name: info.min for info in describe(settings_cls) if info.name in SCALED_WIDTHS}
    values = dict(teacher.settings)
    for name in SCALED_WIDTHS:
        scaled = round(values[name] * width_factor)
        if scaled < smallest[name]:
            raise InputError(
                f"width_factor {width_factor:g} makes the student's {name} {scaled} from the teacher's "
                f"{values[name]} (in {teacher.label}); the smallest is {smallest[name]:g}: raise width_factor to at "
                f"least {smallest[name] / values[name]:g}"
            )
        values[name] = scaled
    return parse(settings_cls, values)


@register_recipe
class DistillRecipe(LatentGANRecipe):
    name = "distill"
    description = "Teacher-to-student distillation (KGAN): a narrow copy of a trained dcgan/wgan-gp/hagan generator"
    data_kind = "image2d"
    settings_cls = DistillSettings

    def __init__(self) -> None:
        super().__init__()
        self._training = False
        """Set by `prepare`: only a training run loads the teacher."""
        self._student: dict[str, Any] = {}
        """The student's recipe, settings and the teacher's stage widths: all a checkpoint needs to rebuild it."""

    @classmethod
    def check_settings(cls, settings: DistillSettings) -> None:
        student_settings(teacher_checkpoint(settings), settings.width_factor)

    @classmethod
    def data_resolution(cls, settings: DistillSettings) -> int:
        return int(teacher_checkpoint(settings).settings["resolution"])

    @classmethod
    def data_normalization(cls, settings: DistillSettings) -> Normalization:
        return teacher_checkpoint(settings).normalization

    @property
    def resolution(self) -> int:
        return int(self._student["settings"]["resolution"])

    @property
    def latent_dim(self) -> int:
        return int(self._student["settings"]["latent_dim"])

    def prepare(self, dataset: Any) -> None:
        self._training = True

    def build(self, settings: DistillSettings, device: torch.device) -> None:
        """The student and, when training, the frozen teacher; loaded only to sample, `load_state_dict` builds it."""
        self.settings, self.device = settings, device
        if not self._training:
            return
        checkpoint = teacher_checkpoint(settings)
        teacher = load_recipe(checkpoint, str(device))
        self.teacher_generator = teacher.ema.module.requires_grad_(False).eval()
        self.teacher_discriminator = _discriminator(teacher.models).requires_grad_(False).eval()
        self._build_student(
            checkpoint.recipe,
            student_settings(checkpoint, settings.width_factor),
            stage_widths(self.teacher_generator),
        )
        self._vgg = self._vgg_distance()

    def _build_student(self, recipe: str, settings: Any, teacher_widths: list[int]) -> None:
        inner = get_recipe(recipe)()
        inner.build(settings, self.device)
        generator = inner.models["generator"]
        self.adopt_gan(generator, _discriminator(inner.models))
        adapters = StageAdapters(stage_widths(generator), teacher_widths).to(self.device)
        self.models["adapters"] = adapters
        self.optimizers["generator"].add_param_group({"params": list(adapters.parameters())})
        self._student = {"recipe": recipe, "settings": to_dict(settings), "teacher_widths": list(teacher_widths)}

    def _vgg_distance(self) -> Distance | None:
        """The VGG16 perceptual distance when asked for; its weight file is read once, before the first step."""
        if self.settings.perceptual != "vgg16":
            return None
        from medsynth.models.vgg import load_vgg

        vgg = load_vgg(16, self.settings.vgg_weights or None).to(self.device).requires_grad_(False).eval()
        return features_distance(vgg_features(vgg, LPIPS_LAYERS))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "student": self._student}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not self.models:  # loaded to sample: the checkpoint says what the student is
            spec = state["student"]
            settings = parse(get_recipe(spec["recipe"]).settings_cls, spec["settings"])
            self._build_student(spec["recipe"], settings, list(spec["teacher_widths"]))
        super().load_state_dict(state)

    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, float]:
        s = self.settings
        generator, discriminator = self.models["generator"], self.models["discriminator"]
        n = batch.shape[0]

        # Student discriminator: real images -> 1, student images -> 0, both through the same augmentation.
        with torch.no_grad():
            fake = generator(torch.randn(n, self.latent_dim, device=self.device))
        d_train = self.trainable("discriminator")
        real_out, fake_out = d_train(self.augment(batch)), d_train(self.augment(fake))
        d_real, d_fake = _bce(_logit(real_out), 1.0), _bce(_logit(fake_out), 0.0)
        self.optimize("discriminator", d_real + d_fake)
        if isinstance(real_out, DiscriminatorOutput):  # hagan's reverse skip reads its discriminator's features
            generator.observe(real_out.features[::-1], fake_out.features[::-1])

        # Student generator: soft terms from the teacher on the same latent, hard term from its own discriminator.
        discriminator.requires_grad_(False)
        z = torch.randn(n, self.latent_dim, device=self.device)
        with torch.no_grad(), _stage_maps(self.teacher_generator) as teacher_maps:
            teacher_images = self.teacher_generator(z)
        with _stage_maps(generator) as student_maps:
            student_images = self.trainable("generator")(z)
        with torch.no_grad():
            teacher_logits, teacher_features = _judged(self.teacher_discriminator, teacher_images)
        student_logits, student_features = _judged(self.teacher_discriminator, student_images)
        terms = {
            "pixel": F.l1_loss(student_images, teacher_images),
            "perceptual": self._perceptual(student_images, teacher_images, student_features, teacher_features),
            "feature": torch.stack(
                [
                    F.mse_loss(adapted, target)
                    for adapted, target in zip(self.trainable("adapters")(student_maps), teacher_maps, strict=True)
                ]
            ).mean(),
            "soft_discriminator": softened_kl(teacher_logits, student_logits, s.temperature),
        }
        soft = (
            s.pixel_weight * terms["pixel"] + s.perceptual_weight * terms["perceptual"]
            + s.feature_weight * terms["feature"] + s.soft_weight * terms["soft_discriminator"]
        )  # fmt: skip
        hard = _bce(_logit(discriminator(self.augment(student_images))), 1.0)
        g_loss = s.alpha * soft + s.beta * hard
        self.optimize("generator", g_loss)
        discriminator.requires_grad_(True)
        self.ema.update()

        return {
            "d_loss": (d_real + d_fake).item(),
            "d_loss_real": d_real.item(),
            "d_loss_fake": d_fake.item(),
            "g_loss": g_loss.item(),
            "soft": soft.item(),
            "hard": hard.item(),
            **{name: value.item() for name, value in terms.items()},
        }

    def _perceptual(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        student_features: list[torch.Tensor],
        teacher_features: list[torch.Tensor],
    ) -> torch.Tensor:
        """P(student, teacher) on the features the settings name: the teacher discriminator's, VGG16's, or none."""
        if self.settings.perceptual == "teacher-discriminator":
            return feature_distance(student_features, teacher_features)
        if self._vgg is not None:
            return self._vgg(student, teacher)
        return student.new_zeros(())


def softened_kl(teacher_logits: Any, student_logits: Any, temperature: float) -> torch.Tensor:
    """``T^2 KL(p || q)``, p and q the real/fake probabilities ``sigma(logit / T)`` of ``(B,)`` logits; batch mean."""
    target, logits = _logit(teacher_logits) / temperature, _logit(student_logits) / temperature
    p = torch.sigmoid(target)
    kl = p * (F.logsigmoid(target) - F.logsigmoid(logits)) + (1 - p) * (F.logsigmoid(-target) - F.logsigmoid(-logits))
    return temperature**2 * kl.mean()


class StageAdapters(nn.Module):
    """1x1 convolutions taking the student's stage maps ``[(B, s_l, H_l, W_l)]`` to the teacher's widths ``t_l``."""

    def __init__(self, student_widths: list[int], teacher_widths: list[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(s, t, 1) for s, t in zip(student_widths, teacher_widths, strict=True))

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [conv(m) for conv, m in zip(self.convs, maps, strict=True)]


def stage_widths(generator: nn.Module) -> list[int]:
    """Channels of `generator`'s stage maps: one per batch-normalised stage (dcgan's and hagan's generators)."""
    return [m.num_features for m in generator.modules() if isinstance(m, nn.BatchNorm2d)]


@contextlib.contextmanager
def _outputs_of(model: nn.Module, kind: type[nn.Module]) -> Iterator[list[torch.Tensor]]:
    """The outputs of `model`'s submodules of type `kind`, in call order, during the forward passes inside the block."""
    outputs: list[torch.Tensor] = []
    keep = lambda _module, _inputs, out: outputs.append(out)  # noqa: E731
    hooks = [m.register_forward_hook(keep) for m in model.modules() if isinstance(m, kind)]
    try:
        yield outputs
    finally:
        for hook in hooks:
            hook.remove()


def _stage_maps(generator: nn.Module) -> contextlib.AbstractContextManager[list[torch.Tensor]]:
    """The generator's ``(B, C_l, H_l, W_l)`` stage maps (its ReLUs' outputs) during the forward passes in the block."""
    return _outputs_of(generator, nn.ReLU)


def _judged(discriminator: nn.Module, images: torch.Tensor) -> tuple[Any, list[torch.Tensor]]:
    """A discriminator's output on `images` and its stage activations (LeakyReLU outputs; hagan: encoder features)."""
    with _outputs_of(discriminator, nn.LeakyReLU) as activations:
        out = discriminator(images)
    return out, (out.features if isinstance(out, DiscriminatorOutput) else activations)


def _discriminator(models: dict[str, nn.Module]) -> nn.Module:
    """The discriminator (``discriminator`` or wgan-gp's ``critic``) of a teacher-family recipe's models."""
    return models["discriminator"] if "discriminator" in models else models["critic"]


def _logit(out: Any) -> torch.Tensor:
    """``(B,)`` image-level logits of a discriminator's output (hagan's U-Net returns several)."""
    return out.image if isinstance(out, DiscriminatorOutput) else out


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))
