"""`vqgan-hdfb` and `vqgan`: a VQGAN autoencoder, then an autoregressive prior over its tokens, in one run.

`vqgan-hdfb` follows "HiResMed-VQGAN", the background route of Tang et al. (2025): the encoder and
decoder are built of hierarchical dual-path fusion blocks (`medsynth.models.hdfb`). `vqgan` is the
baseline of Esser et al. (2021) with plain residual blocks; the two differ only in the default of
the `block` setting. Networks: `medsynth.models.vqgan`, `.quantizer`, `.patchgan`, `.token_prior`;
losses: `medsynth.losses.vqperceptual`. docs/vqgan-hdfb.md explains every choice.

A run has two stages, steps counted from 0:

1. ``autoencoder_steps`` steps of the autoencoder stage: per step, one autoencoder update (L1 +
   perceptual + codebook + beta * commitment, plus the adaptively weighted adversarial term from
   `disc_start` on), then, from `disc_start` on, one discriminator update (hinge loss) on the real
   batch and the step's reconstructions. After the update, entries of the codebook unused for
   `revive_after` steps are revived (`VectorQuantizer.revive`).
2. ``prior_steps`` steps of the prior stage: the autoencoder is frozen; the real batch is encoded to
   token maps and the transformer prior takes one cross-entropy step on them.

`sample` draws token maps from the prior and decodes them. Before the prior has trained a step, a
run's preview samples are reconstructions of up to 8 training items (the prior could only give
noise), and a checkpoint of that stage cannot sample: `sample` raises `InputError`, `reconstruct`
works. The run's length comes from the settings (``steps_from_data``): ``TrainConfig.steps`` is
ignored.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medsynth.data.datasets import SliceDataset
from medsynth.errors import InputError, SettingsError
from medsynth.losses.dtcr import vgg_features
from medsynth.losses.vqperceptual import (
    LPIPS_LAYERS,
    PERCEPTUAL,
    Distance,
    adaptive_weight,
    features_distance,
    hinge_discriminator_loss,
    paired_activations_distance,
)
from medsynth.models.dcgan import init_weights
from medsynth.models.patchgan import PatchDiscriminator
from medsynth.models.token_prior import TokenPrior, next_token_loss
from medsynth.models.vqgan import BLOCKS, LEVELS, VQAutoencoder
from medsynth.models.ema import EMA
from medsynth.settings import setting, with_default
from medsynth.training.gan_optimizer import GANOptimizerSettings
from medsynth.training.recipe import SAMPLE_CHUNK, Recipe, register_recipe

PREVIEW_ITEMS = 8
"""Training items whose reconstructions are the previews of the autoencoder stage."""
DECODE_PIXELS = 2**20
"""Output pixels decoded per forward pass (one 1,024 x 1,024 image), to bound memory."""
MIN_SCALE = 0.5
"""Training images whose planes are smaller than this fraction of `resolution` are refused."""
PRIOR_BETAS = (0.9, 0.95)
"""Adam betas of the prior (minGPT's and taming's transformer values)."""


@dataclass
class VQGANSettings(GANOptimizerSettings):
    resolution: int = setting(128, "Training image side length in pixels", choices=(32, 64, 128, 256, 512, 1024))
    batch_size: int = setting(8, "Real images per batch and process (paper: 8)", min=1, max=1024)
    block: str = setting("resblock", "Block of encoder and decoder: plain residual block or HDFB", choices=BLOCKS)
    stage_factor: int = setting(
        2, "Downsampling factor of each of the three encoder stages (4: the paper's 1024 -> 16 tokens)", choices=(2, 4)
    )
    base_channels: int = setting(32, "Channels at full resolution (paper-size model: 128)", choices=(8, 16, 32, 64, 128, 256))
    channel_mult: str = setting("1,2,4,4", "Channel multipliers of the four resolution levels, comma-separated")
    blocks_per_level: int = setting(1, "Blocks at each resolution level of encoder and decoder", min=1, max=4)
    hdfb_kernels: str = setting("3,5,7", "Kernel sizes of the HDFB's depth-wise branches (odd, comma-separated)")
    drop_path: float = setting(0.1, "DropPath rate of the HDFB's multi-scale branch", min=0.0, max=0.9)
    codebook_size: int = setting(1024, "Codebook entries N", min=2, max=65536)
    codebook_dim: int = setting(256, "Length D of a codebook entry", min=2, max=1024)
    beta: float = setting(0.25, "Weight of the commitment loss", min=0.0, max=10.0)
    revive_after: int = setting(100, "Steps unused after which a codebook entry is revived (0: never)", min=0, max=1_000_000)
    rec_weight: float = setting(1.0, "Weight of the L1 reconstruction loss", min=0.0, max=100.0)
    perceptual: str = setting("vgg16", "Perceptual features: VGG16's (weight file) or the discriminator's", choices=PERCEPTUAL)
    perceptual_weight: float = setting(1.0, "Weight of the perceptual loss", min=0.0, max=100.0)
    vgg_weights: str = setting("", "Path of the VGG16 weight file or its folder (empty: the usual places)")
    codebook_weight: float = setting(1.0, "Weight of codebook + beta * commitment", min=0.0, max=100.0)
    disc_weight: float = setting(0.8, "Factor of the adaptive adversarial weight", min=0.0, max=100.0)
    disc_start: int = setting(1000, "Autoencoder steps before the adversarial loss is switched on", min=0, max=10_000_000)
    disc_channels: int = setting(32, "Width of the patch discriminator's first layer (taming: 64)", min=4, max=512)
    disc_layers: int = setting(3, "Stride-2 layers of the patch discriminator", min=1, max=5)
    eps: float = setting(1e-8, "Adam epsilon of every optimiser (paper: 1e-8)", min=1e-12, max=1e-3)
    autoencoder_steps: int = setting(2000, "Steps of the autoencoder stage", min=1, max=10_000_000)
    prior_steps: int = setting(1000, "Steps of the token prior stage (0: no prior, no sampling)", min=0, max=10_000_000)
    prior_dim: int = setting(128, "Width of the prior transformer", min=8, max=2048)
    prior_layers: int = setting(4, "Blocks of the prior transformer", min=1, max=48)
    prior_heads: int = setting(4, "Attention heads of the prior transformer (divides prior_dim)", min=1, max=32)
    prior_lr: float = setting(3e-4, "Adam learning rate of the prior", min=1e-7, max=1e-1)
    lr_g: float = with_default(GANOptimizerSettings, "lr_g", 2.25e-5, "here the autoencoder's; paper: 2.25e-5")
    lr_d: float = with_default(GANOptimizerSettings, "lr_d", 2.25e-5, "paper: 2.25e-5")
    beta1: float = with_default(GANOptimizerSettings, "beta1", 0.5, "paper: 0.5")
    beta2: float = with_default(GANOptimizerSettings, "beta2", 0.9, "paper: 0.9")
    ema_decay: float = with_default(
        GANOptimizerSettings, "ema_decay", 0.0, "here of the autoencoder; 0: none, as published"
    )

    def __post_init__(self) -> None:
        # Combinations are checked wherever settings are parsed: a config, the Train form, a checkpoint's.
        check_settings(self)


@dataclass
class HDFBSettings(VQGANSettings):
    block: str = setting("hdfb", "Block of encoder and decoder: HDFB or plain residual block", choices=BLOCKS)


def int_list(text: str, name: str) -> tuple[int, ...]:
    """``"1,2,4"`` -> ``(1, 2, 4)``; SettingsError naming the setting otherwise."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise SettingsError(f"{name}={text!r} must be positive whole numbers separated by commas, e.g. 1,2,4,4")
    return values


def check_settings(s: VQGANSettings) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The channel multipliers and HDFB kernel sizes of `s`; SettingsError naming each problem."""
    problems = []
    try:
        mult = int_list(s.channel_mult, "channel_mult")
        if len(mult) != LEVELS:
            problems.append(f"channel_mult={s.channel_mult!r} must give {LEVELS} multipliers, one per resolution level")
    except SettingsError as exc:
        mult, problems = (), [str(exc)]
    try:
        kernels = int_list(s.hdfb_kernels, "hdfb_kernels")
        if any(k % 2 == 0 for k in kernels):
            problems.append(f"hdfb_kernels={s.hdfb_kernels!r} must be odd sizes, e.g. 3,5,7")
    except SettingsError as exc:
        kernels, problems = (), [*problems, str(exc)]
    downsampling = s.stage_factor**(LEVELS - 1)
    if s.resolution % downsampling:
        problems.append(
            f"resolution {s.resolution} is not a multiple of stage_factor**3 = {downsampling}; "
            f"use a resolution of at least {downsampling}, or stage_factor=2"
        )
    if s.resolution < 2 ** (s.disc_layers + 2):
        problems.append(f"resolution {s.resolution} is too small for disc_layers={s.disc_layers}; lower disc_layers")
    if s.prior_dim % s.prior_heads:
        problems.append(f"prior_dim {s.prior_dim} is not a multiple of prior_heads {s.prior_heads}")
    if problems:
        raise SettingsError("bad settings for the VQGAN: " + "; ".join(problems))
    return mult, kernels


@contextmanager
def evaluating(*modules: nn.Module) -> Iterator[None]:
    """Run `modules` in eval mode (no DropPath) without gradients, restoring their modes after."""
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        with torch.no_grad():
            yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


@register_recipe
class VQGANRecipe(Recipe):
    """See the module docstring. ``models``: ``autoencoder``, ``discriminator`` and ``prior``."""

    name = "vqgan"
    description = "VQGAN (Esser et al. 2021) with plain residual blocks, then a transformer prior over its tokens"
    data_kind = "image2d"
    settings_cls = VQGANSettings
    steps_from_data = True

    def __init__(self) -> None:
        super().__init__()
        self.preview: torch.Tensor | None = None
        self.prior_updates = 0
        self._perceptual: Distance | None = None

    def prepare(self, dataset: SliceDataset) -> None:
        """Refuse images much smaller than the training size; keep up to 8 items for previews."""
        self._check_sizes(dataset)
        picks = torch.linspace(0, len(dataset) - 1, min(PREVIEW_ITEMS, len(dataset))).round().long().tolist()
        self.preview = torch.stack([dataset[i] for i in picks])

    def _check_sizes(self, dataset: SliceDataset) -> None:
        for image in dataset.images:
            rows, cols = dataset.plane_shape(image)
            if max(rows, cols) < MIN_SCALE * dataset.size:
                raise InputError(
                    f"image {image.name!r} has {rows}x{cols} pixel planes, less than half the training resolution "
                    f"{dataset.size}: the VQGAN would learn the blur of upsampling; lower resolution to "
                    f"{max(32, 2 ** (max(rows, cols).bit_length() - 1))} or train on larger images"
                )

    def build(self, settings: VQGANSettings, device: torch.device) -> None:
        mult, kernels = check_settings(settings)
        self.settings, self.device = settings, device
        s = settings
        autoencoder = VQAutoencoder(
            s.block, s.base_channels, mult, s.blocks_per_level, s.stage_factor, s.codebook_size, s.codebook_dim,
            kernels, s.drop_path,
        )  # fmt: skip
        autoencoder.encoder.apply(init_weights)
        autoencoder.decoder.apply(init_weights)
        discriminator = PatchDiscriminator(s.disc_channels, s.disc_layers)
        discriminator.apply(init_weights)
        grid = s.resolution // autoencoder.downsampling
        prior = TokenPrior(s.codebook_size, grid * grid, s.prior_dim, s.prior_layers, s.prior_heads)
        self.models = {
            "autoencoder": autoencoder.to(device),
            "discriminator": discriminator.to(device),
            "prior": prior.to(device),
        }
        adam = {"betas": (s.beta1, s.beta2), "eps": s.eps}
        self.optimizers = {
            "autoencoder": torch.optim.Adam(autoencoder.parameters(), lr=s.lr_g, **adam),
            "discriminator": torch.optim.Adam(discriminator.parameters(), lr=s.lr_d, **adam),
            "prior": torch.optim.Adam(prior.parameters(), lr=s.prior_lr, betas=PRIOR_BETAS, eps=s.eps),
        }
        self.ema = EMA(autoencoder, s.ema_decay) if s.ema_decay > 0 else None
        if self.preview is not None:  # training (prepare ran): a missing VGG file stops the run before its first step
            self._perceptual_distance()

    def _perceptual_distance(self) -> Distance | None:
        """The perceptual distance, built on first use: generation and reconstruction never need its weight file."""
        s = self.settings
        if self._perceptual is None and s.perceptual == "discriminator":
            self._perceptual = paired_activations_distance(self.models["discriminator"].activations)
        elif self._perceptual is None and s.perceptual == "vgg16":
            from medsynth.models.vgg import load_vgg

            vgg = load_vgg(16, s.vgg_weights or None).to(self.device).requires_grad_(False).eval()
            self._perceptual = features_distance(vgg_features(vgg, LPIPS_LAYERS))
        return self._perceptual

    @property
    def coder(self) -> VQAutoencoder:
        """The autoencoder that encodes for the prior, reconstructs and decodes samples: its average when kept."""
        return self.ema.module if self.ema is not None else self.models["autoencoder"]

    @property
    def token_grid(self) -> int:
        """Tokens per side of a training image."""
        return self.resolution // self.models["autoencoder"].downsampling

    def total_steps(self) -> int:
        return self.settings.autoencoder_steps + self.settings.prior_steps

    def phase(self, step: int) -> str:
        s = self.settings
        if step >= s.autoencoder_steps:
            return "stage 2/2: token prior"
        return "stage 1/2: autoencoder" + (" + adversarial" if step >= s.disc_start else "")

    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, float]:
        if step < self.settings.autoencoder_steps:
            return self._autoencoder_step(batch, step)
        return self._prior_step(batch)

    def _autoencoder_step(self, real: torch.Tensor, step: int) -> dict[str, float]:
        s = self.settings
        autoencoder, discriminator = self.models["autoencoder"], self.models["discriminator"]
        adversarial = step >= s.disc_start

        # Autoencoder: L1 + perceptual + quantiser terms, plus the adaptive adversarial term after the warm-up.
        discriminator.requires_grad_(False)
        reconstruction, quantized = self.trainable("autoencoder")(real)
        l1 = (real - reconstruction).abs().mean()
        distance = self._perceptual_distance()
        perceptual = distance(real, reconstruction) if distance is not None else l1.new_zeros(())
        nll = s.rec_weight * l1 + s.perceptual_weight * perceptual
        quantizer_loss = quantized.codebook_loss + s.beta * quantized.commitment_loss
        g_adv = weight = l1.new_zeros(())
        if adversarial:
            g_adv = -discriminator(reconstruction).mean()
            weight = s.disc_weight * adaptive_weight(nll, g_adv, autoencoder.decoder.last_layer)
        loss = nll + weight * g_adv + s.codebook_weight * quantizer_loss
        self.optimize("autoencoder", loss)
        discriminator.requires_grad_(True)
        autoencoder.quantizer.record(quantized.indices, step)
        revived = autoencoder.quantizer.revive(quantized.latents, step, s.revive_after)
        if self.ema is not None:
            self.ema.update()

        # Discriminator: hinge loss on the real batch and this step's reconstructions.
        d_loss = d_real = d_fake = l1.new_zeros(())
        if adversarial:
            d_train = self.trainable("discriminator")
            d_loss, d_real, d_fake = hinge_discriminator_loss(d_train(real), d_train(reconstruction.detach()))
            self.optimize("discriminator", d_loss)

        return {
            "loss": loss.item(),
            "l1": l1.item(),
            "perceptual": perceptual.item(),
            "codebook": quantized.codebook_loss.item(),
            "commitment": quantized.commitment_loss.item(),
            "g_adv": g_adv.item(),
            "adaptive_weight": float(weight),
            "d_loss": d_loss.item(),
            "d_loss_real": d_real.item(),
            "d_loss_fake": d_fake.item(),
            "perplexity": quantized.perplexity.item(),
            "codebook_usage": autoencoder.quantizer.usage(step),
            "revived": float(revived),
        }

    def _prior_step(self, real: torch.Tensor) -> dict[str, float]:
        """One cross-entropy step of the prior on the token maps of the real batch (the autoencoder frozen)."""
        autoencoder, prior = self.coder, self.models["prior"]
        with evaluating(autoencoder):
            tokens = autoencoder.encode(real).indices.flatten(1)
        logits, _ = self.trainable("prior")(prior.inputs(tokens))
        loss = next_token_loss(logits, tokens)
        self.optimize("prior", loss)
        self.prior_updates += 1
        return {"prior_loss": loss.item()}

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 1, S, S)`` images in [-1, 1] (S a multiple of the downsampling) -> their reconstructions."""
        autoencoder = self.coder
        chunk = max(1, DECODE_PIXELS // (images.shape[-1] * images.shape[-2]))
        with evaluating(autoencoder):
            parts = [autoencoder(x.to(self.device))[0].float().clamp(-1, 1).cpu() for x in images.split(chunk)]
        return torch.cat(parts)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``(n, 1, S, S)`` decoded prior samples in [-1, 1]; see the module docstring for the autoencoder stage."""
        if self.prior_updates == 0:
            if self.preview is None:
                raise InputError(
                    f"this {self.name} checkpoint has not trained its token prior yet (it stopped in the autoencoder "
                    f"stage of {self.settings.autoencoder_steps} steps, or prior_steps is 0), so it cannot sample new "
                    "images; train it on past the autoencoder stage (resume with more prior_steps), or reconstruct "
                    "images"
                )
            return self.reconstruct(self.preview[torch.arange(n) % len(self.preview)])
        autoencoder, prior = self.coder, self.models["prior"]
        grid = self.token_grid
        decode_chunk = max(1, DECODE_PIXELS // self.resolution**2)
        out = []
        with evaluating(autoencoder, prior):
            for start in range(0, n, SAMPLE_CHUNK):
                tokens = prior.sample(min(SAMPLE_CHUNK, n - start), generator).view(-1, grid, grid)
                for part in tokens.split(decode_chunk):
                    out.append(autoencoder.decode_indices(part.to(self.device)).float().clamp(-1, 1).cpu())
        return torch.cat(out)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "progress": {"prior_updates": self.prior_updates}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.prior_updates = int(state["progress"]["prior_updates"])


@register_recipe
class VQGANHDFBRecipe(VQGANRecipe):
    name = "vqgan-hdfb"
    description = "HiResMed-VQGAN: VQGAN with hierarchical dual-path fusion blocks, then a transformer prior"
    settings_cls = HDFBSettings
