"""`singan`: SinGAN (Shaham et al. 2019) trained on one lesion crop and its mask, scale by scale.

Following the reference implementation's choices (`medsynth.models.singan` has the networks):

- the pyramid: the crop (image and lesion mask as two channels, from
  `medsynth.data.datasets.LesionCropDataset`) is downscaled by a factor near `scale_factor` until
  its shorter side is `min_size`; the factor is recomputed so that the coarsest scale is exactly
  `min_size` (``r = (min_size / min(H, W)) ** (1 / (N - 1))``);
- the phases: scale ``k`` trains during steps ``[k * iterations, (k + 1) * iterations)``, so the run
  has ``scales x iterations`` steps whatever ``TrainConfig.steps`` says. At its first step a scale
  gets a new generator and critic initialised from the previous scale's (their widths match) and
  new Adam optimizers (`lr`, betas (0.5, 0.999), rate x0.1 after `lr_decay_at` of its steps); after
  its last step its generator is frozen into the pyramid;
- one step is one round of `d_steps` critic updates (Wasserstein loss with the reference's
  per-pixel gradient penalty, weight `gp_weight`) and `g_steps` generator updates (adversarial loss
  plus `rec_weight` (alpha = 10) times the reconstruction MSE) on one noise draw;
- reconstruction: a fixed noise ``z*`` at the coarsest scale and none above must rebuild the crop;
  the noise amplitude of a scale is ``noise_amp_init`` times the RMSE between the crop at that scale
  and the upsampled reconstruction of the scales below (1 at the coarsest);
- ``concurrent_scales`` K > 1 is ConSinGAN's concurrent training (Hinz et al. 2021, "Improved
  Techniques for Training Single-Image GANs"): while scale ``k`` trains, the generators of the
  K - 1 scales below it train too, through the chain that feeds scale ``k`` (the adversarial and
  the reconstruction losses of scale ``k`` reach them), each with the learning rate ``lr`` times
  ``lr_scale`` per scale below ``k`` (0.1, 0.01, ...); the critic is scale ``k``'s alone. Scales
  further down stay frozen. K = 1 is classic SinGAN. ConSinGAN's other changes (one generator
  growing in feature space, no batch norm, its pyramid rescaling) would replace the networks, not
  extend the recipe, and are not done; its shorter schedule is `iterations`.

The state (and so every checkpoint) holds the frozen generators with their noise amplitudes, ``z*``,
the pyramid's shapes, and the current scale's generator, critic and optimizers with the rounds it
has done (the concurrently trained lower generators are the pyramid's own, saved with it, and the
generator optimizer's later parameter groups), so a resumed run continues mid-scale exactly.
Samples come from the trained scales plus the current one when it has trained at least one round;
they have two channels, the image and the lesion mask (-1 outside, 1 inside). `medsynth.lesions.singan_training` turns a checkpoint into a
lesion generator with `start_scale` and `size` control.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from medsynth.data.datasets import LesionCropDataset
from medsynth.errors import InputError
from medsynth.models.singan import (
    PatchCritic,
    ScaleGenerator,
    SinGAN,
    patch_gradient_penalty,
    receptive_field,
    resize,
)
from medsynth.settings import setting
from medsynth.training.recipe import SAMPLE_CHUNK, Recipe, register_recipe

BETAS = (0.5, 0.999)
CHANNELS = 2
"""The image and its lesion mask."""
MAX_LAYERS = 8


@dataclass
class SinGANSettings:
    """Settings of the `singan` recipe; the defaults train a 48x48 crop in minutes on a 2-core CPU."""

    scale_factor: float = setting(0.75, "Target ratio between the sizes of neighbouring scales", min=0.5, max=0.95)
    # The lower bound is the deepest critic's receptive field, so that every value in range trains.
    min_size: int = setting(
        25, "Shorter side of the coarsest scale (px)", min=receptive_field(MAX_LAYERS), max=256
    )
    iterations: int = setting(200, "Training rounds (steps) per scale (reference: 2000)", min=1, max=100_000)
    d_steps: int = setting(3, "Critic updates per round", min=1, max=10)
    g_steps: int = setting(3, "Generator updates per round", min=1, max=10)
    lr: float = setting(5e-4, "Adam learning rate of both networks", min=1e-6, max=1e-1)
    lr_decay_at: float = setting(0.8, "Fraction of a scale's rounds after which the rate drops x0.1", min=0.0, max=1.0)
    gp_weight: float = setting(0.1, "Weight of the per-pixel gradient penalty", min=0.0, max=100.0)
    rec_weight: float = setting(10.0, "Weight alpha of the reconstruction loss", min=0.0, max=1000.0)
    noise_amp_init: float = setting(0.1, "Noise amplitude per unit of reconstruction RMSE", min=0.0, max=10.0)
    width: int = setting(32, "Channels of every convolution", min=4, max=256)
    layers: int = setting(5, "Convolution blocks per network", min=3, max=MAX_LAYERS)
    concurrent_scales: int = setting(
        1, "Scales trained together, the newest and those below it (ConSinGAN: 3; 1: classic SinGAN)", min=1, max=8
    )
    lr_scale: float = setting(
        0.1, "Learning-rate factor per scale below the newest, when scales train together", min=0.0, max=1.0
    )
    margin: int = setting(
        8, "Pixels kept around the lesion mask's bounding box (-1: the whole image, already a crop)", min=-1, max=4096
    )


def pyramid_shapes(height: int, width: int, scale_factor: float = 0.75, min_size: int = 25) -> list[tuple[int, int]]:
    """``(H, W)`` of every scale, coarsest first; the coarsest's shorter side is `min_size` (or the crop's)."""
    short = min(height, width)
    if short <= min_size:
        return [(height, width)]
    count = math.ceil(math.log(min_size / short) / math.log(scale_factor) - 1e-9) + 1
    ratio = (min_size / short) ** (1.0 / (count - 1))
    return [
        (max(1, round(height * ratio ** (count - 1 - i))), max(1, round(width * ratio ** (count - 1 - i))))
        for i in range(count)
    ]


def pyramid_state(pyramid: SinGAN) -> dict[str, Any]:
    """The frozen part of a SinGAN as checkpoint state: shapes, ``z*``, noise amplitudes, generator weights."""
    return {
        "shapes": [list(shape) for shape in pyramid.shapes],
        "z_star": pyramid.z_star,
        "noise_amps": list(pyramid.noise_amps),
        "generators": [generator.state_dict() for generator in pyramid.generators],
    }


def pyramid_from_state(state: dict[str, Any], width: int, layers: int) -> SinGAN:
    """The SinGAN of `pyramid_state`, on CPU; KeyError or RuntimeError when the state does not fit."""
    channels = int(state["z_star"].shape[1])
    pyramid = SinGAN([tuple(shape) for shape in state["shapes"]], channels, width, layers)
    pyramid.z_star.copy_(state["z_star"])
    for weights, amp in zip(state["generators"], state["noise_amps"], strict=True):
        generator = ScaleGenerator(channels, width, layers)
        generator.load_state_dict(weights)
        pyramid.add_scale(generator, amp)
    return pyramid


def finished_state(pyramid: SinGAN, iterations: int) -> dict[str, Any]:
    """Recipe state of a SinGAN with no scale left to train (a trained, possibly stopped, pyramid saved for sampling)."""
    return {
        "models": {},
        "optimizers": {},
        "pyramid": pyramid_state(pyramid),
        "scale": len(pyramid.shapes),
        "rounds": 0,
        "noise_amp": 1.0,
        "iterations": iterations,
    }


@register_recipe
class SinGANRecipe(Recipe):
    """See the module docstring. ``models`` are the current scale's ``generator`` and ``critic`` (none once all are done)."""

    name = "singan"
    description = "SinGAN on one lesion crop and its mask: a pyramid of small GANs trained scale by scale"
    data_kind = "lesion"
    settings_cls = SinGANSettings
    steps_from_data = True

    def __init__(self) -> None:
        super().__init__()
        self.crop: torch.Tensor | None = None
        self.shapes: list[tuple[int, int]] = []
        self.reals: list[torch.Tensor] = []
        self.pyramid: SinGAN | None = None
        self.scale = 0
        self.rounds = 0
        self.noise_amp = 1.0
        self._rec_input: torch.Tensor | None = None
        """The reconstruction output of the frozen scales, upsampled to the lowest trained scale (cached)."""

    def prepare(self, dataset: LesionCropDataset) -> None:
        self.crop = dataset[0][None]

    def build(self, settings: SinGANSettings, device: torch.device) -> None:
        """The pyramid of the prepared crop and the coarsest scale's networks; an empty shell without a crop.

        Without `prepare` (a checkpoint loaded for sampling) `load_state_dict` supplies the pyramid.
        """
        self.settings, self.device = settings, device
        if self.crop is None:
            return
        if min(self.crop.shape[-2:]) < receptive_field(settings.layers):
            raise InputError(
                f"the lesion crop is {self.crop.shape[-2]}x{self.crop.shape[-1]} px, smaller than the "
                f"{receptive_field(settings.layers)} px patch a {settings.layers}-layer critic sees; keep more context "
                "around the lesion (a larger margin) or use fewer layers"
            )
        self.shapes = pyramid_shapes(*self.crop.shape[-2:], settings.scale_factor, settings.min_size)
        self.reals = [resize(self.crop, shape).to(device) for shape in self.shapes]
        self.pyramid = SinGAN(self.shapes, CHANNELS, settings.width, settings.layers).to(device)
        self.pyramid.z_star.copy_(torch.randn(self.pyramid.z_star.shape).to(device))
        self._start_scale(0, None)

    @property
    def resolution(self) -> int:
        return max(self.shapes[-1]) if self.shapes else 0

    @property
    def batch_size(self) -> int:
        return 1

    def total_steps(self) -> int:
        return len(self.shapes) * self.settings.iterations

    def phase(self, step: int) -> str:
        if not self.shapes:
            return ""
        return f"scale {min(step // self.settings.iterations, len(self.shapes) - 1) + 1}/{len(self.shapes)}"

    @property
    def _lowest_trained(self) -> int:
        """The lowest scale that trains now: the current one, or ``concurrent_scales - 1`` below it."""
        return max(0, self.scale - self.settings.concurrent_scales + 1)

    def _start_scale(self, scale: int, previous: tuple[ScaleGenerator, PatchCritic] | None) -> None:
        """New networks and optimizers of `scale`, from the `previous` scale's weights when given.

        The generator optimizer's parameter group ``i`` is the generator ``i`` scales below `scale`
        (group 0 the new one), trained at ``lr * lr_scale ** i``; with one concurrent scale there is
        one group.
        """
        assert self.pyramid is not None
        s = self.settings
        generator = ScaleGenerator(CHANNELS, s.width, s.layers).to(self.device)
        critic = PatchCritic(CHANNELS, s.width, s.layers).to(self.device)
        if previous is not None:
            generator.load_state_dict(previous[0].state_dict())
            critic.load_state_dict(previous[1].state_dict())
        generator.requires_grad_(True)
        self.scale, self.rounds, self._rec_input = scale, 0, None
        if self.reals:  # measured while every lower scale is still frozen (eval-mode batch norm)
            rmse = float(F.mse_loss(self._current_input(None), self.reals[scale]).sqrt())
            self.noise_amp = 1.0 if scale == 0 else s.noise_amp_init * rmse
        lower = list(self.pyramid.generators[self._lowest_trained : scale])[::-1]
        for below in lower:
            below.train().requires_grad_(True)
        groups = [
            {"params": list(g.parameters()), "lr": s.lr * s.lr_scale**depth} for depth, g in enumerate([generator, *lower])
        ]
        self.models = {"generator": generator.train(), "critic": critic.train()}
        self.optimizers = {
            "generator": torch.optim.Adam(groups, lr=s.lr, betas=BETAS),
            "critic": torch.optim.Adam(critic.parameters(), lr=s.lr, betas=BETAS),
        }

    def _current_input(self, seed: int | None) -> torch.Tensor:
        """``(1, C, H_s, W_s)``: the scales below the current one, upsampled to it (zeros at scale 0).

        With a `seed` every lower scale draws fresh noise from it (a random sample); without, they
        reconstruct from ``z*``. The frozen part of the reconstruction is computed once per scale;
        the concurrently trained lower generators run with gradients on every call.
        """
        assert self.pyramid is not None
        low = self._lowest_trained
        if seed is None:
            if self._rec_input is None:
                self._rec_input = self.pyramid.previous(low, None)
            rng, start, below = torch.Generator().manual_seed(0), self.scale, self._rec_input
        else:
            rng, start = torch.Generator().manual_seed(seed), 0
            below = self.pyramid.previous(low, rng)
        return resize(self.pyramid.run_scales(below, low, self.scale, 1, rng, start), self.shapes[self.scale])

    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, float]:
        """One round at the current scale; `batch` is the crop itself, whose scales `build` resized once."""
        assert self.pyramid is not None
        s = self.settings
        real = self.reals[self.scale]
        decay = 0.1 if self.rounds >= max(1, int(s.lr_decay_at * s.iterations)) else 1.0
        for optimizer in self.optimizers.values():
            for depth, group in enumerate(optimizer.param_groups):
                group["lr"] = s.lr * s.lr_scale**depth * decay
        # Noise on CPU from the per-step seed, so that a step's draws do not depend on the device.
        noise = (self.noise_amp * torch.randn(real.shape)).to(self.device)
        sample_seed = int(torch.randint(0, 2**62, ()))
        concurrent = self._lowest_trained < self.scale
        with torch.no_grad():
            prev = self._current_input(sample_seed)
            rec_input = self._current_input(None)
        rec_noise = self.pyramid.z_star if self.scale == 0 else torch.zeros_like(real)
        generator, critic = self.trainable("generator"), self.trainable("critic")
        for _ in range(s.d_steps):
            fake = self.models["generator"](noise, prev).detach()
            real_score, fake_score = critic(real).mean(), critic(fake).mean()
            penalty = patch_gradient_penalty(self.models["critic"], real, fake)
            d_loss = fake_score - real_score + s.gp_weight * penalty
            self.optimize("critic", d_loss)
        for _ in range(s.g_steps):
            if concurrent:  # the lower generators changed in the last update: rerun them on the same noise
                prev, rec_input = self._current_input(sample_seed), self._current_input(None)
            adversarial = -self.models["critic"](generator(noise, prev)).mean()
            rec = F.mse_loss(generator(rec_noise * self.noise_amp, rec_input), real)
            self.optimize("generator", adversarial + s.rec_weight * rec)
        self.rounds += 1
        if self.rounds == s.iterations:
            self._finish_scale()
        return {
            "d_loss": d_loss.item(),
            "wasserstein": (real_score - fake_score).item(),
            "gp": penalty.item(),
            "g_adv": adversarial.item(),
            "rec": rec.item(),
        }

    def _finish_scale(self) -> None:
        """Freeze the current generator into the pyramid and start the next scale, if any."""
        assert self.pyramid is not None
        generator, critic = self.models["generator"], self.models["critic"]
        for below in self.pyramid.generators:
            below.eval().requires_grad_(False)
        self.pyramid.add_scale(generator, self.noise_amp)
        if self.scale + 1 < len(self.shapes):
            self._start_scale(self.scale + 1, (generator, critic))
        else:
            self.scale, self.rounds, self.models, self.optimizers = self.scale + 1, 0, {}, {}

    def trained_pyramid(self) -> SinGAN:
        """The trained scales, frozen: during training copies, plus the current scale once it has trained a round.

        Copies, because the concurrently trained lower generators are still training (and freezing
        them here would change the run).
        """
        assert self.pyramid is not None, "build() and prepare() or load_state_dict() come first"
        if not self.models:
            return self.pyramid
        pyramid = SinGAN(self.pyramid.shapes, self.pyramid.channels, self.pyramid.width, self.pyramid.layers)
        pyramid.z_star.copy_(self.pyramid.z_star)
        pyramid.to(self.device)
        for generator, amp in zip(self.pyramid.generators, self.pyramid.noise_amps):
            pyramid.add_scale(copy.deepcopy(generator), amp)
        if self.rounds > 0:
            pyramid.add_scale(copy.deepcopy(self.models["generator"]), self.noise_amp)
        return pyramid

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``(n, 2, H, W)``: images and lesion masks in [-1, 1] at the crop's size, fresh noise at every scale."""
        pyramid = self.trained_pyramid()
        if pyramid.trained_scales == 0:
            raise InputError("this SinGAN has no trained scale yet (it was stopped before its first round); train it longer")
        chunks = [pyramid.sample(min(SAMPLE_CHUNK, n - i), generator).float().cpu() for i in range(0, n, SAMPLE_CHUNK)]
        return torch.cat(chunks)

    def state_dict(self) -> dict[str, Any]:
        assert self.pyramid is not None
        return {
            **super().state_dict(),
            "pyramid": pyramid_state(self.pyramid),
            "scale": self.scale,
            "rounds": self.rounds,
            "noise_amp": self.noise_amp,
            "iterations": self.settings.iterations,
            "concurrent_scales": self.settings.concurrent_scales,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild the pyramid and the current scale from `state`; ValueError when it does not fit this crop or settings."""
        s = self.settings
        pyramid = pyramid_from_state(state["pyramid"], s.width, s.layers).to(self.device)
        if self.shapes and pyramid.shapes != self.shapes:
            raise ValueError(
                f"the checkpoint's pyramid {pyramid.shapes} differs from this crop's {self.shapes} "
                "(were scale_factor or min_size changed?)"
            )
        if int(state["iterations"]) != s.iterations:
            raise ValueError(f"iterations={s.iterations} differs from the checkpoint's {state['iterations']}")
        self.pyramid, self.shapes = pyramid, pyramid.shapes
        scale = int(state["scale"])
        if scale < len(self.shapes):
            # Checkpoints written before the setting existed trained one scale at a time.
            saved = int(state.get("concurrent_scales", 1))
            if saved != s.concurrent_scales:
                raise ValueError(
                    f"concurrent_scales={s.concurrent_scales} differs from the checkpoint's {saved}; "
                    "resume with the checkpoint's value"
                )
            self._start_scale(scale, None)
            super().load_state_dict(state)
            self.rounds, self.noise_amp = int(state["rounds"]), float(state["noise_amp"])
        else:
            self.scale, self.rounds, self.models, self.optimizers = scale, 0, {}, {}
