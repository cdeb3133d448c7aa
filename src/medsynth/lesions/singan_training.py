"""The SinGAN lesion generator: training on one lesion crop, saving, loading and sampling lesions.

Training follows Shaham et al. (2019) and their reference code, scale by scale, coarsest first:

- the pyramid: the crop (image and footprint mask as two channels) is downscaled by a factor near
  `scale_factor` until its shorter side is `min_size`; the factor is recomputed so that the
  coarsest scale is exactly `min_size` (``r = (min_size / min(H, W)) ** (1 / (N - 1))``);
- at each scale a new generator and critic (initialised from the previous scale's, whose widths
  match) train for `iterations` rounds of `d_steps` critic updates (Wasserstein loss with the
  reference's per-pixel gradient penalty, weight `gp_weight`) and `g_steps` generator updates (adversarial loss plus `rec_weight` (alpha = 10)
  times the reconstruction MSE), Adam (`lr`, betas (0.5, 0.999)), learning rate x0.1 after
  `lr_decay_at` of the iterations;
- reconstruction: a fixed noise ``z*`` at the coarsest scale and none above must rebuild the crop;
  the noise amplitude of a scale is ``noise_amp_init`` times the RMSE between the crop at that
  scale and the upsampled reconstruction of the scales below (1 at the coarsest).

Sampling (`sample_lesions`) draws fresh noise from scale `start_scale` on (0: the whole lesion is
new; higher: the crop's layout with new detail) at an output size `size` times the crop's, and
returns lesions in the crop's units (the crop is normalised to [-1, 1] by its own minimum and
maximum, which the checkpoint stores).

A checkpoint is one ``.safetensors`` file (written atomically) whose header holds the JSON
metadata under the key ``medsynth_singan`` (recipe ``singan``, settings, normalisation, pyramid shapes,
noise amplitudes) and whose tensors are the generators' weights and ``z*``; the critics are not
kept, because a SinGAN is not resumed after a scale is done.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from scipy import ndimage

import medsynth
from medsynth.atomic import write_bytes
from medsynth.data.normalization import Normalization
from medsynth.errors import CheckpointError, InputError, TrainingError
from medsynth.lesions.crop import MIN_CROP_SIDE
from medsynth.lesions.fusion import Lesion
from medsynth.models.singan import PatchCritic, ScaleGenerator, SinGAN, patch_gradient_penalty, resize
from medsynth.settings import parse, setting, to_dict
from medsynth.training.control import TrainControl
from medsynth.training.events import CheckpointSaved, Event, Finished, Paused, Progress, Resumed, Samples, Started

RECIPE = "singan"
FORMAT_VERSION = 1
METADATA_KEY = "medsynth_singan"
"""Not the engine's ``medsynth`` key: `medsynth.training.checkpoint` cannot resume or sample a SinGAN."""
PREVIEW_SAMPLES = 4


@dataclass
class SinGANSettings:
    """Settings of SinGAN training; the defaults train a 48x48 crop in minutes on a 2-core CPU."""

    scale_factor: float = setting(0.75, "Target ratio between the sizes of neighbouring scales", min=0.5, max=0.95)
    min_size: int = setting(25, "Shorter side of the coarsest scale (px)", min=8, max=256)
    iterations: int = setting(200, "Training rounds per scale (reference: 2000)", min=1, max=100_000)
    d_steps: int = setting(3, "Critic updates per round", min=1, max=10)
    g_steps: int = setting(3, "Generator updates per round", min=1, max=10)
    lr: float = setting(5e-4, "Adam learning rate of both networks", min=1e-6, max=1e-1)
    lr_decay_at: float = setting(0.8, "Fraction of a scale's rounds after which the rate drops x0.1", min=0.0, max=1.0)
    gp_weight: float = setting(0.1, "Weight of the per-pixel gradient penalty", min=0.0, max=100.0)
    rec_weight: float = setting(10.0, "Weight alpha of the reconstruction loss", min=0.0, max=1000.0)
    noise_amp_init: float = setting(0.1, "Noise amplitude per unit of reconstruction RMSE", min=0.0, max=10.0)
    width: int = setting(32, "Channels of every convolution", min=4, max=256)
    layers: int = setting(5, "Convolution blocks per network", min=3, max=8)
    seed: int = setting(0, "Random seed of weights and noise", min=0)
    log_every: int = setting(25, "Rounds between progress events", min=1)


@dataclass(frozen=True)
class LesionGenerator:
    """A trained SinGAN with what is needed to return lesions in data units."""

    model: SinGAN
    normalization: Normalization
    settings: SinGANSettings
    path: Path | None = None

    @property
    def scales(self) -> int:
        return self.model.trained_scales


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


def crop_tensor(values: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, Normalization]:
    """``(1, 2, H, W)`` training tensor (normalised values, mask as -1/1) and the min/max normalisation."""
    values = np.asarray(values, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if values.ndim != 2 or values.shape != mask.shape:
        raise InputError(f"SinGAN trains on a 2D crop and a mask of the same shape, got {values.shape} and {mask.shape}")
    if min(values.shape) < MIN_CROP_SIDE:
        raise InputError(f"the crop is {values.shape[0]}x{values.shape[1]} px; select at least {MIN_CROP_SIDE}x{MIN_CROP_SIDE}")
    if not np.isfinite(values).all():
        raise InputError("the crop holds NaN or infinite values; choose a crop of valid pixels")
    if not mask.any():
        raise InputError("the lesion mask of the crop is empty; select a crop that contains the lesion label")
    low, high = float(values.min()), float(values.max())
    if high <= low:
        raise InputError(f"the crop is constant ({low}); choose a crop that shows the lesion")
    normalization = Normalization(low, high, method="minmax")
    stacked = np.stack([normalization.apply(values), np.where(mask, 1.0, -1.0).astype(np.float32)])
    return torch.from_numpy(stacked)[None], normalization


def train_singan(
    values: np.ndarray,
    mask: np.ndarray,
    settings: SinGANSettings | None = None,
    *,
    control: TrainControl | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    device: str = "cpu",
) -> Generator[Event, None, LesionGenerator]:
    """Train a SinGAN on a ``(H, W)`` crop in data units and its ``(H, W)`` lesion mask, yielding events.

    A stop request ends the current scale early and keeps the scales done so far (the finest
    missing scales are then replaced by upsampling). The model is written to `checkpoint` at the
    end when given; `Finished.checkpoint` names it. The generator's return value (``StopIteration.value``,
    napari's ``worker.returned``) is the trained `LesionGenerator`.
    """
    settings = settings or SinGANSettings()
    control = control or TrainControl()
    real, normalization = crop_tensor(values, mask)
    dev = torch.device(device)
    shapes = pyramid_shapes(real.shape[-2], real.shape[-1], settings.scale_factor, settings.min_size)
    reals = [resize(real, shape).to(dev) for shape in shapes]
    torch.manual_seed(settings.seed)
    noise_rng = torch.Generator().manual_seed(settings.seed)
    model = SinGAN(shapes, channels=real.shape[1], width=settings.width, layers=settings.layers).to(dev)
    model.z_star.copy_(torch.randn(model.z_star.shape, generator=noise_rng).to(dev))
    total = len(shapes) * settings.iterations
    yield Started(RECIPE, total, 0, str(dev))
    step, reason, losses = 0, "completed", {}
    previous: tuple[ScaleGenerator, PatchCritic] | None = None
    for scale, target in enumerate(reals):
        generator, critic = _scale_networks(settings, real.shape[1], previous, dev)
        run = _ScaleRun(model, scale, target, generator, critic, settings, noise_rng)
        window: dict[str, list[float]] = {}
        started = time.perf_counter()
        for round_index in range(settings.iterations):
            if control.paused:
                yield Paused(step)
                control.wait_while_paused()
                yield Resumed(step)
            if control.stop_requested:
                reason = "stopped"
                break
            losses = run.round(round_index)
            step += 1
            for name, value in losses.items():
                window.setdefault(name, []).append(value)
            if step % settings.log_every == 0 or round_index == settings.iterations - 1:
                yield _progress(step, total, window, run, started)
                window, started = {}, time.perf_counter()
        if reason == "stopped" and scale > 0 and not run.rounds_done:
            break
        model.add_scale(generator, run.noise_amp)
        previous = (generator, critic)
        yield Samples(step, _preview(model, normalization, settings.seed))
        if reason == "stopped":
            break
    path = None
    if checkpoint is not None:
        path = save_singan(LesionGenerator(model.cpu(), normalization, settings), checkpoint, step=step, reason=reason)
        yield CheckpointSaved(step, path)
    yield Finished(step=step, checkpoint=path, reason=reason, losses=losses)
    return LesionGenerator(model.cpu(), normalization, settings, path)


def train_to_end(values: np.ndarray, mask: np.ndarray, settings: SinGANSettings | None = None, **options) -> LesionGenerator:
    """Run `train_singan` synchronously, ignoring its events; the trained generator (for scripts and tests)."""
    events = train_singan(values, mask, settings, **options)
    while True:
        try:
            next(events)
        except StopIteration as done:
            return done.value


def save_singan(lesion_generator: LesionGenerator, path: str | os.PathLike[str], *, step: int = 0, reason: str = "completed") -> Path:
    """Write a trained SinGAN to a ``.safetensors`` file atomically (see the module docstring); return the path."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise InputError(f"{path}: a SinGAN checkpoint name must end with .safetensors; rename the output")
    model = lesion_generator.model
    meta = {
        "format_version": FORMAT_VERSION,
        "medsynth_version": medsynth.__version__,
        "recipe": RECIPE,
        "settings": to_dict(lesion_generator.settings),
        "normalization": lesion_generator.normalization.to_dict(),
        "shapes": [list(s) for s in model.shapes],
        "channels": model.channels,
        "noise_amps": model.noise_amps,
        "step": step,
        "reason": reason,
    }
    tensors = {f"generators.{k}": v.detach().cpu().contiguous() for k, v in model.generators.state_dict().items()}
    tensors["z_star"] = model.z_star.detach().cpu().contiguous()
    return write_bytes(path, save_tensors(tensors, metadata={METADATA_KEY: json.dumps(meta)}))


def load_singan(path: str | os.PathLike[str]) -> LesionGenerator:
    """Read a SinGAN checkpoint; CheckpointError for a missing, foreign, newer or corrupt file."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read SinGAN checkpoint {path}: {exc.strerror or exc}") from None
    try:
        header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])
        meta = json.loads(header["__metadata__"][METADATA_KEY])
        tensors = load_tensors(blob)
    except Exception:  # safetensors raises its own error types for broken files
        raise CheckpointError(
            f"{path} is not a medsynth SinGAN checkpoint (a .safetensors file with a SinGAN header, written by "
            "train_singan or the Lesions widget); train a SinGAN on a lesion crop first"
        ) from None
    if meta.get("recipe") != RECIPE:
        raise CheckpointError(f"{path} was made by recipe {meta.get('recipe')!r}, not {RECIPE!r}; give a SinGAN lesion model")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has SinGAN format version {meta['format_version']}, newer than the {FORMAT_VERSION} this "
            f"medsynth {medsynth.__version__} reads; upgrade napari-medsynth"
        )
    try:
        settings = parse(SinGANSettings, meta["settings"])
        model = SinGAN([tuple(s) for s in meta["shapes"]], meta["channels"], settings.width, settings.layers)
        for amp in meta["noise_amps"]:
            model.add_scale(ScaleGenerator(model.channels, settings.width, settings.layers), amp)
        model.generators.load_state_dict({k[len("generators.") :]: v for k, v in tensors.items() if k.startswith("generators.")})
        model.z_star.copy_(tensors["z_star"])
        normalization = Normalization.from_dict(meta["normalization"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"SinGAN checkpoint {path} is corrupt or incomplete ({exc}); use another one") from None
    return LesionGenerator(model, normalization, settings, path)


def sample_lesions(
    lesion_generator: LesionGenerator, n: int, seed: int, *, start_scale: int = 0, size: float = 1.0
) -> list[Lesion]:
    """`n` new lesions in the crop's units, each with its footprint (largest mask component, holes filled).

    A lesion whose generated mask is empty keeps an empty footprint; callers draw again.
    """
    if n < 1:
        raise InputError(f"the number of lesions n={n} must be at least 1")
    if not 0 < size <= 8:
        raise InputError(f"lesion size factor {size} must be in (0, 8]")
    if not 0 <= start_scale < lesion_generator.scales:
        raise InputError(
            f"variability start scale {start_scale} must be between 0 (most varied) and {lesion_generator.scales - 1}"
        )
    images = lesion_generator.model.sample(n, torch.Generator().manual_seed(seed), start_scale, size).cpu().numpy()
    values = lesion_generator.normalization.invert(images[:, 0])
    return [Lesion(v, _footprint(m > 0)) for v, m in zip(values, images[:, 1])]


def _footprint(mask: np.ndarray) -> np.ndarray:
    components, count = ndimage.label(mask)
    if count == 0:
        return mask
    largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
    return ndimage.binary_fill_holes(components == largest)


class _ScaleRun:
    """The optimisers, noise amplitude and one training round of one scale."""

    def __init__(
        self,
        model: SinGAN,
        scale: int,
        real: torch.Tensor,
        generator: ScaleGenerator,
        critic: PatchCritic,
        settings: SinGANSettings,
        noise_rng: torch.Generator,
    ) -> None:
        self.model, self.scale, self.real, self.settings, self.noise_rng = model, scale, real, settings, noise_rng
        self.generator, self.critic = generator.train(), critic.train()
        self.rec_input = model.previous(scale, None)
        self.noise_amp = 1.0 if scale == 0 else settings.noise_amp_init * float(F.mse_loss(self.rec_input, real).sqrt())
        self.rec_noise = model.z_star if scale == 0 else torch.zeros_like(real)
        betas = (0.5, 0.999)
        self.opt_g = torch.optim.Adam(generator.parameters(), lr=settings.lr, betas=betas)
        self.opt_d = torch.optim.Adam(critic.parameters(), lr=settings.lr, betas=betas)
        milestone = [max(1, int(settings.lr_decay_at * settings.iterations))]
        self.schedulers = [torch.optim.lr_scheduler.MultiStepLR(o, milestone, 0.1) for o in (self.opt_g, self.opt_d)]
        self.rounds_done = 0

    def round(self, index: int) -> dict[str, float]:
        """`d_steps` critic updates then `g_steps` generator updates on one noise draw; the loss terms."""
        s = self.settings
        noise = self.noise_amp * torch.randn(self.real.shape, generator=self.noise_rng).to(self.real.device)
        prev = self.model.previous(self.scale, self.noise_rng)
        for _ in range(s.d_steps):
            fake = self.generator(noise, prev).detach()
            real_score, fake_score = self.critic(self.real).mean(), self.critic(fake).mean()
            penalty = patch_gradient_penalty(self.critic, self.real, fake)
            d_loss = fake_score - real_score + s.gp_weight * penalty
            _update(self.opt_d, d_loss, "critic", self.scale)
        for _ in range(s.g_steps):
            adversarial = -self.critic(self.generator(noise, prev)).mean()
            rec = F.mse_loss(self.generator(self.rec_noise * self.noise_amp, self.rec_input), self.real)
            _update(self.opt_g, adversarial + s.rec_weight * rec, "generator", self.scale)
        for scheduler in self.schedulers:
            scheduler.step()
        self.rounds_done = index + 1
        return {
            "d_loss": d_loss.item(),
            "wasserstein": (real_score - fake_score).item(),
            "gp": penalty.item(),
            "g_adv": adversarial.item(),
            "rec": rec.item(),
        }


def _update(optimizer: torch.optim.Optimizer, loss: torch.Tensor, name: str, scale: int) -> None:
    if not torch.isfinite(loss):
        raise TrainingError(
            f"SinGAN scale {scale}: the {name} loss is not finite ({float(loss)}); training stopped and no model "
            "was saved: lower the learning rate or choose a crop with less extreme values"
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _scale_networks(
    settings: SinGANSettings, channels: int, previous: tuple[ScaleGenerator, PatchCritic] | None, device: torch.device
) -> tuple[ScaleGenerator, PatchCritic]:
    """A new generator and critic, starting from the previous scale's weights (their widths always match)."""
    generator = ScaleGenerator(channels, settings.width, settings.layers).to(device)
    critic = PatchCritic(channels, settings.width, settings.layers).to(device)
    if previous is not None:
        generator.load_state_dict(previous[0].state_dict())
        critic.load_state_dict(previous[1].state_dict())
    generator.requires_grad_(True)
    return generator, critic


def _progress(step: int, total: int, window: dict[str, list[float]], run: _ScaleRun, started: float) -> Progress:
    elapsed = time.perf_counter() - started
    count = len(next(iter(window.values()), [])) or 1
    per_round = elapsed / count
    remaining = total - step
    return Progress(
        step=step,
        total_steps=total,
        # The scale rides along with the loss terms because `Progress` has no field for it (the widget shows it).
        losses={**{name: float(np.mean(v)) for name, v in window.items()}, "scale": float(run.scale)},
        learning_rates={"lr_generator": run.opt_g.param_groups[0]["lr"], "lr_critic": run.opt_d.param_groups[0]["lr"]},
        images_per_s=count / elapsed if elapsed > 0 else 0.0,
        eta_s=remaining * per_round,
    )


def _preview(model: SinGAN, normalization: Normalization, seed: int) -> np.ndarray:
    """``(PREVIEW_SAMPLES, H, W)`` samples in data units, always from the same noise."""
    images = model.sample(PREVIEW_SAMPLES, torch.Generator().manual_seed(seed))
    return normalization.invert(images[:, 0].cpu().numpy())
