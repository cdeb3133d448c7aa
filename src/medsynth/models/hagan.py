"""The HAGAN generator: DCGAN stages with a reverse skip connection from the discriminator's encoder.

The reverse skip connection (after Ju et al., "HAGAN", 2024) feeds what the discriminator's encoder
sees back into the generator at the matching resolutions. What flows, and when:

- After every discriminator update the recipe hands `ReverseSkip.observe` the per-channel mean and
  standard deviation (over batch and space) of the encoder's features at each size, for the
  augmented real batch and for the generated batch of that update. They are detached: nothing
  flows back into the discriminator along this path.
- Each `ReverseSkip` keeps running averages of those four vectors in buffers (momentum
  `STATS_MOMENTUM`), as batch norm keeps its running statistics.
- In every forward pass, in training and sampling alike, each generator stage of side 4, 8, ...,
  R/2 is modulated by its buffers: ``h * (1 + tanh(gamma)) + beta``, where ``(gamma, beta)`` is a
  learned linear map of ``[mu_real, sigma_real, mu_real - mu_fake, sigma_real - sigma_fake]``. The
  map starts at zero, so a new generator is a plain DCGAN generator.

Only statistics are fused, never the features of individual images: sampling needs no real image
(the buffers are part of the generator's state, averaged by its EMA and stored in checkpoints), and
the generator cannot copy a training image through this path. The paper fuses "real and synthetic
distribution features" without saying how a generator samples without a real input; this is our
reading, chosen so that it can.
"""

from __future__ import annotations

import torch
from torch import nn

from medsynth.models.dcgan import init_weights, stage_widths

STATS_MOMENTUM = 0.1
"""Weight of the newest observation in the running feature statistics (batch norm's default)."""


class ReverseSkip(nn.Module):
    """Modulates ``(B, generator_width, H, W)`` generator features by running statistics of discriminator features.

    `observe` updates the statistics of the ``discriminator_width`` channels; see the module docstring.
    """

    def __init__(self, discriminator_width: int, generator_width: int) -> None:
        super().__init__()
        for name in ("real_mean", "real_std", "fake_mean", "fake_std"):
            self.register_buffer(name, torch.zeros(discriminator_width))
        self.modulation = nn.Linear(4 * discriminator_width, 2 * generator_width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    @torch.no_grad()
    def observe(self, real: torch.Tensor, fake: torch.Tensor, momentum: float = STATS_MOMENTUM) -> None:
        """Fold in the statistics of discriminator features ``(B, C, H, W)`` of a real and a generated batch."""
        for prefix, features in (("real", real), ("fake", fake)):
            std, mean = torch.std_mean(features.detach().float(), dim=(0, 2, 3))
            getattr(self, f"{prefix}_mean").lerp_(mean, momentum)
            getattr(self, f"{prefix}_std").lerp_(std, momentum)

    def statistics(self) -> torch.Tensor:
        """``(4 C,)``: real mean and deviation, and their differences from the generated ones."""
        return torch.cat(
            [self.real_mean, self.real_std, self.real_mean - self.fake_mean, self.real_std - self.fake_std]
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.modulation(self.statistics().to(h.dtype)).chunk(2)
        return h * (1 + torch.tanh(gamma)).view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)


class HAGANGenerator(nn.Module):
    """``(B, latent_dim)`` latents -> ``(B, 1, resolution, resolution)`` images in [-1, 1].

    DCGAN stages (transposed convolutions, batch norm, ReLU) from 4x4 up to ``resolution / 2``, then
    a transposed convolution to one channel and tanh. With `discriminator_widths` (the encoder's
    widths at the stage sizes 4, 8, ..., R/2) every stage output passes through a `ReverseSkip`.
    """

    def __init__(
        self,
        resolution: int = 64,
        latent_dim: int = 128,
        channels: int = 16,
        discriminator_widths: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        widths = stage_widths(resolution, channels)  # at 4, 8, ..., R/2
        if discriminator_widths is not None and len(discriminator_widths) != len(widths):
            raise ValueError(
                f"reverse skip needs discriminator widths at the {len(widths)} stage sizes, got {discriminator_widths}"
            )
        self.stages = nn.ModuleList(
            [nn.Sequential(nn.ConvTranspose2d(latent_dim, widths[0], 4, 1, 0, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())]
        )
        self.stages.extend(
            nn.Sequential(nn.ConvTranspose2d(w_in, w_out, 4, 2, 1, bias=False), nn.BatchNorm2d(w_out), nn.ReLU())
            for w_in, w_out in zip(widths[:-1], widths[1:])
        )
        self.to_image = nn.Sequential(nn.ConvTranspose2d(widths[-1], 1, 4, 2, 1, bias=False), nn.Tanh())
        self.apply(init_weights)
        self.reverse_skips: nn.ModuleList | None = None
        if discriminator_widths is not None:
            self.reverse_skips = nn.ModuleList(ReverseSkip(d, g) for d, g in zip(discriminator_widths, widths))

    def observe(self, real_features: list[torch.Tensor], fake_features: list[torch.Tensor]) -> None:
        """Fold in discriminator encoder features at the stage sizes 4, 8, ..., R/2 (`ReverseSkip.observe`)."""
        if self.reverse_skips is None:
            return
        for skip, real, fake in zip(self.reverse_skips, real_features, fake_features):
            skip.observe(real, fake)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z[:, :, None, None]
        for k, stage in enumerate(self.stages):
            x = stage(x)
            if self.reverse_skips is not None:
                x = self.reverse_skips[k](x)
        return self.to_image(x)
