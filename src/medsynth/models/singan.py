"""SinGAN (Shaham, Dekel and Michaeli, "SinGAN: Learning a Generative Model from a Single Natural Image", ICCV 2019).

A pyramid of small fully convolutional GANs, coarsest scale first. At every scale the generator
takes the previous scale's output upsampled to this scale's size plus noise, and adds a residual
to it: ``x_n = x_up + G_n(z_n * amp_n + x_up)``. Each network is `layers` 3x3 convolution blocks
(conv, batch norm, LeakyReLU 0.2) without padding; the generator's input is zero-padded by
`layers` pixels so that its output keeps the input size, and its last block is a plain conv with
tanh. The critic has the same body and a one-channel conv as its last layer: a map of patch scores,
whose mean is the image's score.

Values inside the model are normalised (``[-1, 1]``); channel 0 is the image and channel 1, when
present, the lesion mask (-1 outside, 1 inside), so that every sample comes with its footprint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medsynth.models.dcgan import init_weights


def receptive_field(layers: int) -> int:
    """Side in pixels of the patch one critic score sees: `layers` valid 3x3 convolutions, ``2 layers + 1``.

    Every scale of a pyramid must be at least this large, or the critic has no patch to score.
    """
    return 2 * layers + 1


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 valid conv, batch norm, LeakyReLU(0.2): ``(B, in, H, W)`` -> ``(B, out, H - 2, W - 2)``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3), nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.2, inplace=True)
    )


def _body(channels: int, width: int, layers: int) -> nn.Sequential:
    """The first ``layers - 1`` blocks of a `layers`-deep network (the last layer differs between G and D)."""
    if layers < 3:
        raise ValueError(f"a SinGAN network needs at least 3 layers, got {layers}")
    return nn.Sequential(conv_block(channels, width), *[conv_block(width, width) for _ in range(layers - 2)])


class ScaleGenerator(nn.Module):
    """One scale's generator: noise ``(B, C, H, W)`` and upsampled previous output ``(B, C, H, W)`` -> ``(B, C, H, W)``."""

    def __init__(self, channels: int = 2, width: int = 32, layers: int = 5) -> None:
        super().__init__()
        self.body = _body(channels, width, layers)
        self.tail = nn.Sequential(nn.Conv2d(width, channels, 3), nn.Tanh())
        self.pad = layers
        self.apply(init_weights)

    def forward(self, noise: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        # Zero padding (not reflection) as the reference: the borders learn to be borders.
        x = F.pad(noise + previous, (self.pad,) * 4)
        return previous + self.tail(self.body(x))


class PatchCritic(nn.Module):
    """WGAN critic: ``(B, C, H, W)`` -> ``(B,)`` mean of its ``(B, 1, H - 2 L, W - 2 L)`` patch scores."""

    def __init__(self, channels: int = 2, width: int = 32, layers: int = 5) -> None:
        super().__init__()
        self.body = _body(channels, width, layers)
        self.tail = nn.Conv2d(width, 1, 3)
        self.apply(init_weights)

    def patch_scores(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, 1, H - 2 L, W - 2 L)`` scores of the receptive-field patches."""
        return self.tail(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch_scores(x).mean(dim=(1, 2, 3))


def patch_gradient_penalty(critic: PatchCritic, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """SinGAN's gradient penalty: ``E[(||grad_x sum(patch scores)||_2 - 1)^2]`` with the norm taken per pixel.

    The reference implementation penalises the gradient of the SUM of the patch map, its norm over
    the channels of each pixel, at random points between ``(B, C, H, W)`` `real` and `fake`; its
    penalty weight (0.1) is tuned for this form, not for the per-image norm of ordinary WGAN-GP,
    with which the critic runs away on small crops.
    """
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic.patch_scores(mixed).sum(), mixed, create_graph=True)
    return ((grad.norm(2, dim=1) - 1) ** 2).mean()


def resize(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``(B, C, h, w)`` -> ``(B, C, H, W)``, bicubic, antialiased when shrinking."""
    if tuple(x.shape[-2:]) == tuple(shape):
        return x
    shrink = shape[0] < x.shape[-2] or shape[1] < x.shape[-1]
    return F.interpolate(x, size=tuple(shape), mode="bicubic", align_corners=False, antialias=shrink)


class SinGAN(nn.Module):
    """The trained pyramid: generators, noise amplitudes, scale shapes and the reconstruction noise ``z*``.

    `shapes` are the ``(H, W)`` of every scale of the full pyramid, coarsest first; a model stopped
    early holds fewer generators than shapes, and its samples are upsampled to the finest shape.
    """

    def __init__(self, shapes: list[tuple[int, int]], channels: int = 2, width: int = 32, layers: int = 5) -> None:
        super().__init__()
        self.shapes = [tuple(int(v) for v in s) for s in shapes]
        self.channels, self.width, self.layers = channels, width, layers
        self.generators = nn.ModuleList()
        self.noise_amps: list[float] = []
        self.register_buffer("z_star", torch.zeros(1, channels, *self.shapes[0]))

    @property
    def trained_scales(self) -> int:
        return len(self.generators)

    def add_scale(self, generator: ScaleGenerator, noise_amp: float) -> None:
        """Freeze `generator` (eval mode, no gradients) as the next finer scale."""
        generator.eval().requires_grad_(False)
        self.generators.append(generator)
        self.noise_amps.append(float(noise_amp))

    @torch.no_grad()
    def reconstruct(self, scales: int | None = None) -> torch.Tensor:
        """``(1, C, H_s, W_s)``: the training image rebuilt from ``z*`` by the first `scales` generators."""
        return self._run(1, torch.Generator().manual_seed(0), start_scale=self.trained_scales, size=1.0, scales=scales)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, start_scale: int = 0, size: float = 1.0) -> torch.Tensor:
        """``(n, C, round(H * size), round(W * size))`` new images in [-1, 1], drawn on CPU from `generator`.

        Scales below `start_scale` follow the reconstruction path (``z*`` at the coarsest scale, no
        noise after), so a higher `start_scale` keeps the training crop's layout and varies only
        finer detail; 0 draws fresh noise from the coarsest scale on.
        """
        if not 0 <= start_scale <= self.trained_scales:
            raise ValueError(f"start_scale {start_scale} must be between 0 and {self.trained_scales}")
        out = self._run(n, generator, start_scale, size, None)
        final = _scaled(self.shapes[-1], size)
        return resize(out, final)

    def previous(self, scale: int, generator: torch.Generator | None, n: int = 1) -> torch.Tensor:
        """Input of scale `scale`: the frozen coarser scales' output upsampled to its shape (zeros at scale 0).

        With `generator` the coarser scales draw fresh noise (a random sample); without, they
        reconstruct from ``z*``.
        """
        shape = self.shapes[scale]
        if scale == 0:
            return torch.zeros(n, self.channels, *shape, device=self.z_star.device)
        start = 0 if generator is not None else scale
        with torch.no_grad():
            out = self._run(n, generator or torch.Generator().manual_seed(0), start, 1.0, scale)
        return resize(out, shape)

    def _run(self, n: int, generator: torch.Generator, start_scale: int, size: float, scales: int | None) -> torch.Tensor:
        return self.run_scales(None, 0, scales, n, generator, start_scale, size)

    def run_scales(
        self,
        x: torch.Tensor | None,
        first: int,
        last: int | None,
        n: int,
        generator: torch.Generator,
        start_scale: int,
        size: float = 1.0,
    ) -> torch.Tensor:
        """``(n, C, H_l, W_l)``: generators ``first`` to ``last - 1`` run on `x`, the output of the scales below `first`.

        Without ``torch.no_grad`` (unlike `sample`), so that a concurrently trained scale's gradient
        reaches the generators below it; noise is drawn from `generator` in the same order as a
        whole run, so running ``[0, s)`` then ``[s, l)`` draws what ``[0, l)`` draws.
        """
        device = self.z_star.device
        for index, (g, amp) in enumerate(zip(self.generators[:last], self.noise_amps)):
            if index < first:
                continue
            shape = _scaled(self.shapes[index], size)
            prev = torch.zeros(n, self.channels, *shape, device=device) if x is None else resize(x, shape)
            if index >= start_scale:
                noise = torch.randn(n, self.channels, *shape, generator=generator).to(device)
            elif index == 0:
                noise = resize(self.z_star, shape).expand(n, -1, -1, -1)
            else:
                noise = torch.zeros_like(prev)
            x = g(amp * noise, prev)
        if x is None:
            raise ValueError("the SinGAN has no trained scale yet")
        return x


def _scaled(shape: tuple[int, int], size: float) -> tuple[int, int]:
    return max(1, round(shape[0] * size)), max(1, round(shape[1] * size))
