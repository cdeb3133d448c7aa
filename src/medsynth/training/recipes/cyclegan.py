"""`cyclegan`: unpaired image-to-image translation (Zhu et al., "Unpaired Image-to-Image Translation using
Cycle-Consistent Adversarial Networks", 2017), the baseline of issue 14; docs/cyclegan.md explains its use.

Two ResNet generators (`medsynth.models.resnet_generator`), ``g_ab``: A -> B and ``g_ba``: B -> A, and
two 70 x 70 PatchGAN discriminators with instance norm (`medsynth.models.patchgan`), ``d_a`` and
``d_b``, trained on unpaired slices: a batch ``(N, 2, S, S)`` holds a slice of domain A in channel 0 and
an independently drawn slice of domain B in channel 1, each normalised with its own domain's map.

Losses (LSGAN: least squares on the patch outputs; ``lambda`` the cycle weight, ``mu`` the identity
weight as a fraction of it, as in the authors' code):

    G: (D_b(G_ab(a)) - 1)^2 + (D_a(G_ba(b)) - 1)^2
       + lambda * (|G_ba(G_ab(a)) - a|_1 + |G_ab(G_ba(b)) - b|_1)
       + lambda * mu * (|G_ab(b) - b|_1 + |G_ba(a) - a|_1)
    D_b: ((D_b(b) - 1)^2 + D_b(pool_b(G_ab(a)))^2) / 2,  and D_a likewise with pool_a(G_ba(b))

``pool`` is the history of generated images (`medsynth.models.image_pool`, 50 each). Both generators
share one Adam, both discriminators another (lr 2e-4, betas (0.5, 0.999)). The learning rates stay
constant for the first ``lr_decay_from`` of the run (`Recipe.planned_steps`; the paper: half), then
fall linearly towards 0 at its last step.
Translations come from exponential moving averages of the generators.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from medsynth.data.augment import augment_batch
from medsynth.models.ema import EMA
from medsynth.models.image_pool import ImagePool
from medsynth.models.patchgan import PatchDiscriminator
from medsynth.models.resnet_generator import ResNetGenerator
from medsynth.settings import setting
from medsynth.training.gan_optimizer import GANOptimizerSettings
from medsynth.training.recipe import TranslationRecipe, register_recipe

GENERATORS = {"a2b": "g_ab", "b2a": "g_ba"}
"""The generator of each translation direction."""


@dataclass
class CycleGANSettings(GANOptimizerSettings):
    resolution: int = setting(128, "Training slice side length in pixels", choices=(32, 64, 128, 256))
    batch_size: int = setting(1, "Slice pairs (one of each domain) per batch and process (paper: 1)", min=1, max=1024)
    g_channels: int = setting(32, "Generator width at full resolution (paper: 64)", min=4, max=256)
    blocks: int = setting(6, "Residual blocks of each generator (paper: 6 at 128 px, 9 at 256 px)", min=1, max=32)
    d_channels: int = setting(32, "Discriminator width of its first layer (paper: 64)", min=4, max=256)
    cycle_weight: float = setting(10.0, "Weight of the cycle-consistency L1 loss (paper: 10)", min=0.0, max=1000.0)
    identity_weight: float = setting(
        0.5, "Weight of the identity L1 loss, as a fraction of the cycle weight (paper: 0.5)", min=0.0, max=10.0
    )
    pool_size: int = setting(50, "Generated images kept for the discriminators (paper: 50; 0: none)", min=0, max=10_000)
    lr_decay_from: float = setting(
        0.5,
        "Fraction of the run after which the learning rates fall linearly towards 0 (paper: 0.5; 1: no decay)",
        min=0.0,
        max=1.0,
    )


@register_recipe
class CycleGANRecipe(TranslationRecipe):
    name = "cyclegan"
    description = "CycleGAN (Zhu et al. 2017): unpaired translation between two domains, e.g. MR <-> CT"
    settings_cls = CycleGANSettings
    registered = False
    inputs = 1
    directions = {"a2b": "b", "b2a": "a"}

    def __init__(self) -> None:
        super().__init__()
        self.emas: dict[str, EMA] = {}
        self.pools: dict[str, ImagePool] = {}

    def build(self, settings: CycleGANSettings, device: torch.device) -> None:
        self.settings, self.device = settings, device
        generators = {
            name: ResNetGenerator(settings.g_channels, settings.blocks).to(device) for name in ("g_ab", "g_ba")
        }
        discriminators = {
            name: PatchDiscriminator(settings.d_channels, norm="instance").to(device) for name in ("d_a", "d_b")
        }
        betas = (settings.beta1, settings.beta2)
        self.models = {**generators, **discriminators}
        self.optimizers = {
            "generators": torch.optim.Adam(_parameters(generators), lr=settings.lr_g, betas=betas),
            "discriminators": torch.optim.Adam(_parameters(discriminators), lr=settings.lr_d, betas=betas),
        }
        self.emas = {name: EMA(model, settings.ema_decay) for name, model in generators.items()}
        self.pools = {"a": ImagePool(settings.pool_size), "b": ImagePool(settings.pool_size)}

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """Each slice of ``(N, 2, S, S)`` its own small rotation, scaling and shift (no flips), when the run augments.

        The domains are unpaired, so A and B need not share a transform. The generators translate the
        augmented real slices and the discriminators see augmented real slices beside translations of
        augmented ones, both under the same distribution of transforms, which a generator therefore
        cannot gain by learning.
        """
        if not self.augmenting:
            return images
        n, channels, height, width = images.shape
        return augment_batch(images.reshape(n * channels, 1, height, width), flip_probability=0.0).reshape(images.shape)

    def learning_rate_factor(self, step: int) -> float:
        """1 until ``lr_decay_from`` of the planned run, then falling linearly to ``1 / (decay steps + 1)`` at its end.

        As in the authors' code, where the rate of the last epoch is ``1 / (decay epochs + 1)`` of the first.
        A resumed run that asks for more steps stretches the schedule over its new length.
        """
        if self.planned_steps is None:
            return 1.0
        constant = round(self.settings.lr_decay_from * self.planned_steps)
        decay = self.planned_steps - constant
        return 1.0 - min(decay, max(0, step - constant)) / (decay + 1)

    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, float]:
        """One update of both generators, then of both discriminators, on ``(N, 2, S, S)`` unpaired slices."""
        s = self.settings
        factor = self.learning_rate_factor(step)  # set from the step every time: a resumed run follows the schedule
        self.optimizers["generators"].param_groups[0]["lr"] = s.lr_g * factor
        self.optimizers["discriminators"].param_groups[0]["lr"] = s.lr_d * factor
        batch = self.augment(batch)
        real_a, real_b = batch[:, :1], batch[:, 1:]
        n = len(real_a)

        # Generators: fool the other domain's discriminator, come back through the other generator (cycle)
        # and leave images of their own output domain unchanged (identity); the discriminators are frozen.
        # Instance norm normalises each image by itself, so one pass over a concatenation equals separate passes.
        d_a, d_b = self.models["d_a"], self.models["d_b"]
        d_a.requires_grad_(False)
        d_b.requires_grad_(False)
        g_ab, g_ba = self.trainable("g_ab"), self.trainable("g_ba")
        fake_b, same_b = g_ab(torch.cat([real_a, real_b])).split(n)
        fake_a, same_a, cycled_a = g_ba(torch.cat([real_b, real_a, fake_b])).split(n)
        cycled_b = g_ab(fake_a)
        losses = {
            "g_ab_adversarial": _least_squares(d_b(fake_b), 1.0),
            "g_ba_adversarial": _least_squares(d_a(fake_a), 1.0),
            "cycle_a": F.l1_loss(cycled_a.float(), real_a.float()),
            "cycle_b": F.l1_loss(cycled_b.float(), real_b.float()),
            "identity_a": F.l1_loss(same_a.float(), real_a.float()),
            "identity_b": F.l1_loss(same_b.float(), real_b.float()),
        }
        g_loss = (
            losses["g_ab_adversarial"]
            + losses["g_ba_adversarial"]
            + s.cycle_weight * (losses["cycle_a"] + losses["cycle_b"])
            + s.cycle_weight * s.identity_weight * (losses["identity_a"] + losses["identity_b"])
        )
        self.optimize("generators", g_loss)
        d_a.requires_grad_(True)
        d_b.requires_grad_(True)

        # Discriminators: real slices -> 1, generated ones from the history pools -> 0, each loss halved
        # (as in the paper) so that the discriminators learn more slowly than the generators.
        pooled_a, pooled_b = self.pools["a"].query(fake_a), self.pools["b"].query(fake_b)
        real_out_a, fake_out_a = self.trainable("d_a")(torch.cat([real_a, pooled_a])).split(n)
        real_out_b, fake_out_b = self.trainable("d_b")(torch.cat([real_b, pooled_b])).split(n)
        losses["d_a"] = 0.5 * (_least_squares(real_out_a, 1.0) + _least_squares(fake_out_a, 0.0))
        losses["d_b"] = 0.5 * (_least_squares(real_out_b, 1.0) + _least_squares(fake_out_b, 0.0))
        d_loss = losses["d_a"] + losses["d_b"]
        self.optimize("discriminators", d_loss)
        for ema in self.emas.values():
            ema.update()

        return {"g_loss": g_loss.item(), "d_loss": d_loss.item(), **{k: v.item() for k, v in losses.items()}}

    @torch.no_grad()
    def translate(self, images: torch.Tensor, direction: str) -> torch.Tensor:
        """``(N, 1, S, S)`` slices normalised in the input domain -> ``(N, 1, S, S)`` in the output domain,
        by the averaged generator of `direction` (``"a2b"`` or ``"b2a"``)."""
        return self.emas[GENERATORS[direction]].module(images.to(self.device))

    def state_dict(self) -> dict[str, Any]:
        """The models and optimisers, both generator averages and both pools (a resumed run continues exactly)."""
        return {
            **super().state_dict(),
            "emas": {name: ema.state_dict() for name, ema in self.emas.items()},
            "pools": {name: pool.state() for name, pool in self.pools.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for name, ema in self.emas.items():
            ema.load_state_dict(state["emas"][name])
        for name, pool in self.pools.items():
            stored = state["pools"][name]
            pool.load(None if stored is None else stored.to(self.device))


def _parameters(models: dict[str, torch.nn.Module]) -> list[torch.nn.Parameter]:
    return list(itertools.chain.from_iterable(model.parameters() for model in models.values()))


def _least_squares(outputs: torch.Tensor, target: float) -> torch.Tensor:
    """The LSGAN loss (Mao et al. 2017): mean squared distance of the patch outputs from `target`."""
    outputs = outputs.float()
    return F.mse_loss(outputs, torch.full_like(outputs, target))
