"""Recipes: what a GAN is made of, and the registry that lists them.

A recipe names its models, losses, optimizers, default settings and the shape of its data; the
trainer (`medsynth.training.trainer`) supplies everything else (data, device, mixed precision,
seeding, EMA timing, checkpoints, distribution). A recipe subclass declares:

- ``name``, ``description`` (one line), ``data_kind`` (``"image2d"``, ``"sequence"``, ``"patch"``,
  ``"paired"``: ``(2, H, W)`` items of an image and its target map, see `medsynth.data.paired`,
  ``"lesion"``: the one ``(2, h, w)`` crop of a lesion and its mask, see
  `medsynth.data.datasets.LesionCropDataset`; such recipes have a ``margin`` setting, or
  ``"two-domain"``: ``(2, H, W)`` items of a domain-A and a domain-B slice, see
  `medsynth.data.domain_dataset` and `TranslationRecipe`)
  and ``settings_cls``, a dataclass declared with `medsynth.settings.setting` that has at least
  ``resolution`` (training side length) and ``batch_size`` (or overrides those two properties);
- ``build(settings, device)``, which creates ``self.models``, ``self.optimizers`` and ``self.ema``;
- ``train_step(batch, step)``, one generator update written out plainly per phase, returning every
  loss term by name (and any schedule values, named in ``readouts``);
- ``sample(n, generator)``, images from the EMA generator.

Augmentation is the recipe's own business; the trainer only decides whether a run augments
(``TrainConfig.augment``) and says so in ``recipe.augmenting`` before ``build``. It never transforms
the real batch itself: augmenting real images alone lets the transform leak into what a generator
learns. A GAN recipe passes real and generated images alike through ``augment`` just before its
discriminator, in both phases (``augment`` is differentiable in the images); a recipe that maps an
image to its own target, as the paired recipes do, transforms image and target together.

Optional hooks for recipes whose models follow from the data or change during training (SinGAN):

- ``prepare(dataset)`` is called with the training dataset before ``build`` (not when a checkpoint
  is only loaded for sampling, so ``build`` must also work without it);
- ``steps_from_data = True`` with ``total_steps()`` (called after ``build``): the run's length comes
  from the data (SinGAN: scales x iterations) and ``TrainConfig.steps`` is ignored;
- ``local_defaults()``: settings that replace defaults needing a file this machine lacks (e.g. VGG
  weights), for the Train widget's form;
- ``phase(step)``: a label of the phase that step `step` (0-based) belongs to, e.g. ``"scale 3/7"``,
  shown in `medsynth.training.events.Progress.phase`. A recipe may replace ``self.models`` and
  ``self.optimizers`` inside ``train_step`` at a phase boundary; its ``state_dict`` must then hold
  everything ``load_state_dict`` needs to rebuild them, so that a resumed run continues mid-phase.

Optional hooks for recipes bound to another model (distillation from a teacher checkpoint), class
methods on the validated settings, asked by the trainer before any data is read:

- ``check_settings(settings)`` refuses settings that name unusable files (InputError naming them);
- ``data_resolution(settings)`` is the side length of the real training images (default
  ``settings.resolution``);
- ``data_normalization(settings)`` is the intensity map the models are bound to, or None (the default)
  to fit one to the data as ``TrainConfig`` says.

Recipes register with `register_recipe`. Every module of the package `medsynth.training.recipes` is
imported on first use of the registry, so adding a recipe is adding one module there.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from medsynth.data.augment import augment_batch
from medsynth.data.normalization import Normalization
from medsynth.errors import InputError, SettingsError, TrainingError
from medsynth.models.ema import EMA
from medsynth.training.gan_optimizer import GANOptimizerSettings

RECIPE_PACKAGE = "medsynth.training.recipes"
DATA_KINDS = ("image2d", "sequence", "patch", "paired", "lesion", "two-domain")
TARGET_DATA_KINDS = ("paired", "lesion")
"""Data kinds trained on ``(image, target)`` pairs: the CLI's ``--targets`` and the Train widget's target layer."""
SAMPLE_CHUNK = 256
"""Images generated per forward pass when sampling, to bound memory."""
PREVIEW_ITEMS = 8
"""Training items a `TranslationRecipe` keeps for its previews."""

_REGISTRY: dict[str, type[Recipe]] = {}


@dataclass(frozen=True)
class RecipeInfo:
    """A recipe as the CLI and the widget list it."""

    name: str
    description: str
    data_kind: str
    settings_cls: type


class Recipe(ABC):
    """Models, optimizers and one training step of a GAN; see the module docstring."""

    name: ClassVar[str]
    description: ClassVar[str]
    data_kind: ClassVar[str] = "image2d"
    settings_cls: ClassVar[type]
    batches_per_step: int = 1
    """Real batches one `train_step` consumes (e.g. WGAN-GP's critic steps); the trainer passes them stacked."""
    steps_from_data: ClassVar[bool] = False
    """True when `total_steps` sets the run's length from the data and ``TrainConfig.steps`` is ignored."""
    readouts: ClassVar[tuple[str, ...]] = ()
    """Names in `train_step`'s dict that are schedule or stage values rather than losses (plotted apart)."""

    @classmethod
    def local_defaults(cls) -> tuple[dict[str, Any], str]:
        """Settings to offer instead of declared defaults that need a file missing here, and a line saying why.

        The Train widget starts its form from them. The CLI keeps the declared defaults, so that a
        command line means the same on every machine, and the recipe's error names the alternative.
        """
        return {}, ""

    def __init__(self) -> None:
        self.settings: Any = None
        self.device = torch.device("cpu")
        self.models: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.ema: EMA | None = None
        self.augmenting = False
        """Set by the trainer before `build` when the run augments; False when a model is only loaded to sample."""
        self.planned_steps: int | None = None
        """The run's length in steps (``TrainConfig.steps``), set by the trainer before `build` for schedules
        over the run; None when a model is only loaded, and for recipes with `steps_from_data`."""
        self._training_views: dict[str, nn.Module] = {}

    @classmethod
    def check_settings(cls, settings: Any) -> None:
        """Refuse `settings` that name files or models this recipe cannot use; nothing by default."""

    @classmethod
    def data_resolution(cls, settings: Any) -> int:
        """Side length of the real training images."""
        return int(settings.resolution)

    @classmethod
    def data_normalization(cls, settings: Any) -> Normalization | None:
        """The intensity map this recipe's models are bound to; None to fit one to the data."""
        return None

    def prepare(self, dataset: Any) -> None:
        """See the training dataset before `build` (its items, e.g. ``dataset[0]``); nothing by default."""

    def total_steps(self) -> int:
        """Steps of the whole run, after `build`, for recipes with `steps_from_data`."""
        raise NotImplementedError(f"recipe {self.name!r} takes its number of steps from the configuration")

    def phase(self, step: int) -> str:
        """Label of the training phase of 0-based step `step` (e.g. ``"scale 3/7"``); empty for one-phase recipes."""
        return ""

    @abstractmethod
    def build(self, settings: Any, device: torch.device) -> None:
        """Create models, optimizers and the generator EMA on `device` from validated `settings`."""

    @abstractmethod
    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, float]:
        """One generator update on ``(batches_per_step * batch_size, 1, H, W)`` real images in [-1, 1]."""

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``(n, C, H, W)`` images in [-1, 1] from the EMA generator; latents drawn on CPU from `generator`.

        Channel 0 is the image (``C`` is 1 except for recipes that generate a mask with it, as SinGAN does).
        """

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """`images` ``(B, ..., H, W)`` as the discriminator sees them when the run augments, else unchanged.

        Apply it to real and generated images alike, in the discriminator and the generator step. By
        default: small rotations, scalings and shifts (`medsynth.data.augment.augment_batch`), which are
        differentiable in the images, and no flips. Mirror images are not a valid augmentation for a
        generator: anatomy is not left-right symmetric (situs, lateralised lesions, side markers), and
        flipping both branches half of the time would leave the orientation unidentifiable to the
        discriminator, so the generator could draw either.
        """
        return augment_batch(images, flip_probability=0.0) if self.augmenting else images

    @property
    def resolution(self) -> int:
        return int(self.settings.resolution)

    @property
    def batch_size(self) -> int:
        return int(self.settings.batch_size)

    def adopt_gan(self, generator: nn.Module, discriminator: nn.Module, discriminator_name: str = "discriminator") -> None:
        """Take a generator/discriminator pair as this recipe's models, with one Adam each and the generator EMA.

        The recipe's settings must derive from `GANOptimizerSettings`, whose fields configure both.
        """
        optimizer = self.settings
        if not isinstance(optimizer, GANOptimizerSettings):
            raise TypeError(
                f"recipe {self.name!r}: adopt_gan takes its Adam and EMA settings from GANOptimizerSettings; "
                f"derive {type(optimizer).__name__} from medsynth.training.gan_optimizer.GANOptimizerSettings"
            )
        betas = (optimizer.beta1, optimizer.beta2)
        self.models = {"generator": generator, discriminator_name: discriminator}
        self.optimizers = {
            "generator": torch.optim.Adam(generator.parameters(), lr=optimizer.lr_g, betas=betas),
            discriminator_name: torch.optim.Adam(discriminator.parameters(), lr=optimizer.lr_d, betas=betas),
        }
        self.ema = EMA(generator, optimizer.ema_decay)

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Wrap every trained model (e.g. in DistributedDataParallel) for the steps that optimise it."""
        self._training_views = {name: wrap(model) for name, model in self.models.items()}

    def trainable(self, name: str) -> nn.Module:
        """Model `name` as the step that optimises it must call it (wrapped when distributed).

        Steps that only read a model (the generator in a discriminator step and vice versa) call
        ``self.models[name]`` directly, so that gradient synchronisation runs once per optimised model.
        """
        return self._training_views.get(name, self.models[name])

    def optimize(self, name: str, loss: torch.Tensor) -> None:
        """Backpropagate `loss` and step optimizer `name`, refusing non-finite gradients of its parameters."""
        optimizer = self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads)
        if not torch.isfinite(norm):
            raise TrainingError(
                f"the gradients of {name!r} are not finite (norm {float(norm)}); training stopped before the "
                "update so no broken model is saved: lower the learning rate or check the data"
            )
        optimizer.step()

    def learning_rates(self) -> dict[str, float]:
        return {f"lr_{name}": float(opt.param_groups[0]["lr"]) for name, opt in self.optimizers.items()}

    def state_dict(self) -> dict[str, Any]:
        """Models, optimizers and EMA as nested dicts of tensors and plain values."""
        state: dict[str, Any] = {
            "models": {name: model.state_dict() for name, model in self.models.items()},
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, model in self.models.items():
            model.load_state_dict(state["models"][name])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])


class LatentGANRecipe(Recipe):
    """A recipe whose EMA generator maps ``(N, settings.latent_dim)`` Gaussian latents to ``(N, 1, H, W)`` images."""

    @property
    def latent_dim(self) -> int:
        return int(self.settings.latent_dim)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        assert self.ema is not None, "build() must create the generator EMA"
        latents = torch.randn(n, self.latent_dim, generator=generator)
        chunks = [self.ema.module(z.to(self.device)).float().cpu() for z in latents.split(SAMPLE_CHUNK)]
        return torch.cat(chunks) if chunks else torch.empty(0, 1, self.resolution, self.resolution)


class TranslationRecipe(Recipe):
    """A recipe that maps given images of one or two domains to an image (translation, fusion).

    It trains on `medsynth.data.domain_dataset.DomainPairDataset` items: batches ``(B, 2, S, S)`` of a
    domain-A slice (channel 0) and a domain-B slice (channel 1), each normalised with its own domain's
    map. It draws nothing from noise: `medsynth.training.translate` applies `translate` to the slices
    of given images, and `sample` only previews translations of training items during a run.
    """

    data_kind = "two-domain"
    registered: ClassVar[bool] = False
    """True when A and B are co-registered pairs on one grid (fusion); False for unpaired sets."""
    inputs: ClassVar[int] = 1
    """Images one translation takes: 1 (from the other domain of its output), or 2 (A and B, in that order)."""
    directions: ClassVar[dict[str, str]]
    """Direction name -> the domain (``"a"`` or ``"b"``) whose units its output is in; the first is the default."""

    @classmethod
    def domain_normalizations(cls, settings: Any) -> tuple[Normalization, Normalization] | None:
        """The intensity maps of domains A and B the models are bound to (e.g. a teacher's); None to fit them."""
        return None

    @classmethod
    def data_normalization(cls, settings: Any) -> Normalization | None:
        bound = cls.domain_normalizations(settings)
        return bound[0] if bound is not None else None

    @classmethod
    def input_domains(cls, direction: str) -> tuple[str, ...]:
        """The domains of the images `direction` reads, in order."""
        if cls.inputs == 2:
            return ("a", "b")
        return ("b",) if cls.directions[direction] == "a" else ("a",)

    def prepare(self, dataset: Any) -> None:
        """Keep the first training items to preview translations of them during the run."""
        self._preview = torch.stack([dataset[i % len(dataset)] for i in range(PREVIEW_ITEMS)])

    @abstractmethod
    def translate(self, images: torch.Tensor, direction: str) -> torch.Tensor:
        """``(N, inputs, S, S)`` normalised inputs -> ``(N, 1, S, S)`` in the output domain's normalised range.

        Uses the EMA (or evaluation-mode) generator without gradients, on ``self.device``.
        """

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Translations of the kept training items by the first direction, ``(n, 1, S, S)``, cycled."""
        preview = getattr(self, "_preview", None)
        if preview is None:
            raise InputError(
                f"recipe {self.name!r} translates given images and draws none from noise; use "
                "medsynth.training.translate.translate (CLI: medsynth generate CKPT --input IMAGE)"
            )
        direction = next(iter(self.directions))
        channels = [0 if domain == "a" else 1 for domain in self.input_domains(direction)]
        inputs = preview[torch.arange(n) % len(preview)][:, channels].to(self.device)
        return self.translate(inputs, direction).float().cpu()


def register_recipe(cls: type[Recipe]) -> type[Recipe]:
    """Class decorator adding a recipe to the registry under ``cls.name``."""
    if cls.data_kind not in DATA_KINDS:
        raise ValueError(f"recipe {cls.name!r}: data_kind {cls.data_kind!r} is not one of {DATA_KINDS}")
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtin() -> None:
    package = importlib.import_module(RECIPE_PACKAGE)
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{RECIPE_PACKAGE}.{module.name}")


def list_recipes() -> list[RecipeInfo]:
    """Every registered recipe, sorted by name."""
    _load_builtin()
    return [
        RecipeInfo(cls.name, cls.description, cls.data_kind, cls.settings_cls)
        for cls in sorted(_REGISTRY.values(), key=lambda c: c.name)
    ]


def get_recipe(name: str) -> type[Recipe]:
    """The recipe class registered as `name`; SettingsError listing the known recipes otherwise."""
    _load_builtin()
    if name not in _REGISTRY:
        raise SettingsError(f"unknown recipe {name!r}; choose one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
