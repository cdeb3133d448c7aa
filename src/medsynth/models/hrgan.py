"""The `hrgan-dtcr` networks: a progressively grown, modality-conditioned sequence generator and its discriminator.

Generator (docs/hrgan-dtcr.md gives the reasons for each choice):

- a content code ``(B, Zc)`` shared by all frames and per-frame motion codes ``(B, T, Zm)`` from a
  GRU over Gaussian noise, started from the content code, so frames share content and move smoothly;
- an input stage mapping ``[content, motion_t, modality embedding]`` to a ``(C, 4, 4)`` map, which
  can be resampled to a larger grid: everything after it is fully convolutional, so a ``4s x 4s``
  grid gives an image ``s`` times the trained side length;
- upsampling blocks ("adaptive upsampling": a learned per-channel mix of a transposed convolution
  and a sub-pixel convolution), each with a skip connection from the previous stage's feature map
  and FiLM modulation by the modality embedding; the blocks up to `base_resolution` are always
  active, the rest are grown in stage by stage and faded in (Karras et al. 2018).

Discriminator: a per-frame 2D trunk on two channels (the frame and its difference to the previous
frame), grown the same way, followed by a temporal convolution over the frames' features.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from medsynth.errors import InputError

MODALITIES = ("MR", "CT", "US", "CR", "DX", "PT", "NM", "OT")
"""DICOM modality codes the generator has an embedding for."""
INPUT_SIDE = 4
"""Side length of the input stage's feature map at the trained scale."""
MIN_CHANNELS = 4
SLOPE = 0.2


def stage_resolutions(resolution: int, base_resolution: int) -> list[int]:
    """Side lengths of the grown stages, from `base_resolution` up to `resolution` (powers of two apart)."""
    if base_resolution < 2 * INPUT_SIDE or resolution < base_resolution:
        raise InputError(
            f"hrgan: resolution {resolution} must be at least base_resolution {base_resolution}, "
            f"which must be at least {2 * INPUT_SIDE}"
        )
    growth = math.log2(resolution / base_resolution)
    if not growth.is_integer() or not math.log2(base_resolution).is_integer():
        raise InputError(
            f"hrgan: resolution {resolution} and base_resolution {base_resolution} must be powers of two"
        )
    return [base_resolution * 2**k for k in range(int(growth) + 1)]


def channels_at(side: int, width: int, base_resolution: int) -> int:
    """Feature channels at a side length: `width` at the base, doubling per halving (at most 4x), halving per doubling."""
    return max(MIN_CHANNELS, min(4 * width, width * base_resolution // side))


def modality_index(modality: str) -> int:
    """Index of a DICOM modality code in `MODALITIES`; InputError listing them otherwise."""
    if modality not in MODALITIES:
        raise InputError(f"modality {modality!r} is not one of {', '.join(MODALITIES)}")
    return MODALITIES.index(modality)


def overwritable() -> bool:
    """Whether layers may overwrite their own intermediate results: only when autograd records nothing.

    Generation works on tens of megabytes per feature map; every fresh tensor of that size costs
    page faults comparable to the arithmetic on it, so the inference path updates in place.
    """
    return not torch.is_grad_enabled()


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalise each pixel's feature vector of ``(N, C, H, W)`` to unit mean square (Karras et al.).

    Overwrites `x` when `overwritable`: callers pass intermediate results they do not reuse.
    """
    if not overwritable():
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)
    # The norm is a (N, 1, H, W) reduction, so only one small tensor is allocated.
    scale = torch.linalg.vector_norm(x, dim=1, keepdim=True).square_().div_(x.shape[1]).add_(eps).rsqrt_()
    return x.mul_(scale)


def leaky_relu(x: torch.Tensor) -> torch.Tensor:
    """The generator's activation of an intermediate result ``(N, C, H, W)``, in place when `overwritable`."""
    return F.leaky_relu(x, SLOPE, inplace=overwritable())


def add_per_block(h: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``h`` ``(N, C, 2H, 2W)`` plus `value` broadcast over its 2x2 blocks, i.e. shaped like ``(N, C, H, 2, W, 2)``.

    A ``(N, C, H, 1, W, 1)`` value adds a nearest-upsampled map without materialising it; a
    ``(1, C, 1, 2, 1, 2)`` one adds a pattern repeating every two pixels. Overwrites `h` when
    `overwritable`.
    """
    blocks = h.unflatten(3, (h.shape[3] // 2, 2)).unflatten(2, (h.shape[2] // 2, 2))
    if overwritable():
        blocks += value
        return h
    return (blocks + value).flatten(4, 5).flatten(2, 3)


class FiLM(nn.Module):
    """Feature-wise affine modulation ``x * (1 + gamma(e)) + beta(e)`` of ``(N, C, H, W)`` by ``(N, E)`` embeddings."""

    def __init__(self, embed_dim: int, channels: int) -> None:
        super().__init__()
        self.affine = nn.Linear(embed_dim, 2 * channels)
        # Start as the identity so that conditioning is learned as a correction.
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """Overwrites `x` when `overwritable`."""
        gamma, beta = self.affine(embedding)[:, :, None, None].chunk(2, dim=1)
        if overwritable():
            return x.mul_(1 + gamma).add_(beta)
        return x * (1 + gamma) + beta


class AdaptiveUpsample(nn.Module):
    """``(N, C_in, H, W) -> (N, C_out, 2H, 2W)``: a learned per-channel mix of two learned upsamplers.

    The transposed convolution is smooth but prone to checkerboard patterns, the sub-pixel
    convolution (PixelShuffle) is free of overlap but blocky; the sigmoid-weighted mix lets each
    channel use whichever suits it. The mix starts at one half. The sub-pixel path uses a 1x1
    convolution: the 3x3 convolution after every upsampling gives it spatial context, and a 3x3
    kernel there would triple the generator's cost at high resolution.

    Both paths are linear, so the forward pass runs them as one transposed convolution
    (`fused_weights`) plus the sub-pixel bias, which varies with the position in each 2x2 block.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.transposed = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1)
        self.subpixel = nn.Sequential(nn.Conv2d(in_channels, 4 * out_channels, 1), nn.PixelShuffle(2))
        self.mix_logit = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def fused_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Transposed-convolution weight ``(C_in, C_out, 4, 4)`` and bias ``(C_out,)`` of the mix, and the sub-pixel bias ``(C_out, 2, 2)``.

        With stride 2 and padding 1, output pixel ``(2i + a, 2j + b)`` takes input pixel ``(i, j)``
        through kernel tap ``(a + 1, b + 1)``; the sub-pixel convolution maps the same input pixel
        to the same output pixel through its channel ``4 c + 2 a + b`` (PixelShuffle's order).
        """
        mix = torch.sigmoid(self.mix_logit).view(-1)
        conv = self.subpixel[0]
        c_out = mix.shape[0]
        subpixel = conv.weight.view(c_out, 2, 2, -1).permute(3, 0, 1, 2) * (1 - mix)[:, None, None]
        weight = self.transposed.weight * mix[:, None, None] + F.pad(subpixel, (1, 1, 1, 1))
        return weight, self.transposed.bias * mix, conv.bias.view(c_out, 2, 2) * (1 - mix)[:, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias, subpixel_bias = self.fused_weights()
        out = F.conv_transpose2d(x, weight, bias, stride=2, padding=1)
        return add_per_block(out, subpixel_bias[None, :, None, :, None, :])


class UpBlock(nn.Module):
    """One stage: ``(N, C_in, H, W) -> (N, C_out, 2H, 2W)``, modulated by ``(N, E)`` modality embeddings.

    ``skip`` carries the previous stage's feature map (nearest-upsampled, 1x1-projected) past the
    stage's convolutions, so each stage refines rather than replaces what the coarser one made.
    """

    def __init__(self, in_channels: int, out_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.up = AdaptiveUpsample(in_channels, out_channels)
        self.conv = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.film = FiLM(embed_dim, out_channels)
        self.skip = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = leaky_relu(pixel_norm(self.up(x)))
        h = leaky_relu(self.film(pixel_norm(self.conv(h)), embedding))
        # A 1x1 convolution commutes with nearest upsampling: project at the low resolution.
        return add_per_block(h, self.skip(x)[:, :, :, None, :, None])


class MotionCodes(nn.Module):
    """Per-frame motion codes ``(B, T, Zm)`` from noise ``(B, T, Zm)`` and the content code ``(B, Zc)``.

    A GRU integrates the noise over time, so consecutive codes differ by small steps; its initial
    state comes from the content code, so how a sequence moves may depend on what it shows.
    """

    def __init__(self, content_dim: int, motion_dim: int) -> None:
        super().__init__()
        self.initial = nn.Linear(content_dim, motion_dim)
        self.gru = nn.GRU(motion_dim, motion_dim, batch_first=True)

    def forward(self, noise: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        h0 = torch.tanh(self.initial(content))[None]
        codes, _ = self.gru(noise, h0.contiguous())
        return codes


class HRGANGenerator(nn.Module):
    """Sequences ``(B, T, 1, H, W)`` in [-1, 1] from content codes, motion noise and modality indices.

    `forward` runs the stage given (0: `base_resolution`, ``len(stage_resolutions) - 1``: full
    resolution); with ``alpha < 1`` the newest stage is blended with the upsampled output of the one
    before. `input_map` and `synthesize` split the work for tiled generation: only `input_map` is
    not convolutional.
    """

    def __init__(
        self,
        resolution: int,
        base_resolution: int,
        content_dim: int,
        motion_dim: int,
        width: int,
        embed_dim: int,
    ) -> None:
        super().__init__()
        self.resolutions = stage_resolutions(resolution, base_resolution)
        self.content_dim, self.motion_dim = content_dim, motion_dim
        sides = [INPUT_SIDE * 2**k for k in range(int(math.log2(resolution // INPUT_SIDE)) + 1)]
        channels = [channels_at(side, width, base_resolution) for side in sides]
        self.n_base_blocks = int(math.log2(base_resolution // INPUT_SIDE))
        self.motion = MotionCodes(content_dim, motion_dim)
        self.embedding = nn.Embedding(len(MODALITIES), embed_dim)
        self.input = nn.Linear(content_dim + motion_dim + embed_dim, channels[0] * INPUT_SIDE**2)
        self.input_conv = nn.Conv2d(channels[0], channels[0], 3, padding=1)
        self.input_film = FiLM(embed_dim, channels[0])
        self.blocks = nn.ModuleList(UpBlock(c_in, c_out, embed_dim) for c_in, c_out in pairwise(channels))
        self.to_image = nn.ModuleList(
            nn.Conv2d(channels[sides.index(side)], 1, 1) for side in self.resolutions
        )

    @property
    def final_stage(self) -> int:
        return len(self.resolutions) - 1

    def frame_latents(self, content: torch.Tensor, motion_noise: torch.Tensor) -> torch.Tensor:
        """``(B * T, Zc + Zm)`` per-frame latents from ``(B, Zc)`` content and ``(B, T, Zm)`` noise."""
        b, t, _ = motion_noise.shape
        motion = self.motion(motion_noise, content)
        return torch.cat([content[:, None].expand(b, t, -1), motion], dim=2).reshape(b * t, -1)

    def input_map(self, latents: torch.Tensor, embedding: torch.Tensor, grid: int = INPUT_SIDE) -> torch.Tensor:
        """``(N, C0, grid, grid)`` input feature maps of ``(N, Zc + Zm)`` latents and ``(N, E)`` embeddings.

        A `grid` above 4 resamples the learned 4x4 map bilinearly, which scales the whole output.
        """
        x = self.input(torch.cat([latents, embedding], dim=1)).view(latents.shape[0], -1, INPUT_SIDE, INPUT_SIDE)
        if grid != INPUT_SIDE:
            x = F.interpolate(x, size=(grid, grid), mode="bilinear", align_corners=False)
        return x

    def synthesize(self, x: torch.Tensor, embedding: torch.Tensor, stage: int, alpha: float = 1.0) -> torch.Tensor:
        """Images ``(N, 1, g * r / 4, g * r / 4)`` from ``(N, C0, g, g)`` input maps, `r` the stage's side length."""
        # channels_last: oneDNN convolutions with few channels run several times faster on it.
        x = x.contiguous(memory_format=torch.channels_last)
        x = leaky_relu(self.input_film(pixel_norm(self.input_conv(x)), embedding))
        previous = x
        for block in self.blocks[: self.n_base_blocks + stage]:
            previous, x = x, block(x, embedding)
        image = torch.tanh(self.to_image[stage](x))
        if stage > 0 and alpha < 1.0:
            coarse = torch.tanh(self.to_image[stage - 1](previous))
            image = alpha * image + (1 - alpha) * F.interpolate(coarse, scale_factor=2.0, mode="nearest")
        return image

    def embed(self, modality: torch.Tensor, frames: int) -> torch.Tensor:
        """``(B * T, E)`` embeddings of ``(B,)`` modality indices, repeated per frame."""
        return self.embedding(modality).repeat_interleave(frames, dim=0)

    def forward(
        self,
        content: torch.Tensor,
        motion_noise: torch.Tensor,
        modality: torch.Tensor,
        stage: int | None = None,
        alpha: float = 1.0,
    ) -> torch.Tensor:
        stage = self.final_stage if stage is None else stage
        b, t, _ = motion_noise.shape
        embedding = self.embed(modality, t)
        images = self.synthesize(self.input_map(self.frame_latents(content, motion_noise), embedding), embedding, stage, alpha)
        return images.view(b, t, 1, *images.shape[-2:])


class DownBlock(nn.Module):
    """``(N, C_in, H, W) -> (N, C_out, H/2, W/2)``: two 3x3 convolutions and an average pool."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.conv1(x), SLOPE)
        return F.avg_pool2d(F.leaky_relu(self.conv2(x), SLOPE), 2)


def with_differences(frames: torch.Tensor) -> torch.Tensor:
    """``(B, T, 1, H, W)`` frames -> ``(B, T, 2, H, W)``: each frame and its difference to the previous one (0 for the first)."""
    diff = torch.cat([torch.zeros_like(frames[:, :1]), frames[:, 1:] - frames[:, :-1]], dim=1)
    return torch.cat([frames, diff], dim=2)


class HRGANDiscriminator(nn.Module):
    """Logits ``(B,)`` and intermediate activations of sequences ``(B, T, 1, r, r)``, `r` a stage's side length.

    Each frame goes through a 2D trunk together with its temporal difference (`with_differences`),
    so flicker is visible at every scale; a temporal convolution over the frames' final ``4x4``
    features then judges the motion as a whole.
    """

    def __init__(self, resolution: int, base_resolution: int, width: int, head_channels: int = 64) -> None:
        super().__init__()
        self.resolutions = stage_resolutions(resolution, base_resolution)
        sides = [resolution // 2**k for k in range(int(math.log2(resolution // INPUT_SIDE)) + 1)]
        channels = [channels_at(side, width, base_resolution) for side in sides]
        self.sides = sides
        self.from_image = nn.ModuleList(nn.Conv2d(2, channels[sides.index(side)], 1) for side in self.resolutions)
        self.blocks = nn.ModuleList(DownBlock(c_in, c_out) for c_in, c_out in pairwise(channels))
        self.temporal = nn.Conv1d(channels[-1] * INPUT_SIDE**2, head_channels, 3, padding=1)
        self.head = nn.Linear(head_channels, 1)

    def trunk(self, x: torch.Tensor, stage: int, alpha: float = 1.0) -> list[torch.Tensor]:
        """Activations after each block, ``[(N, C, r/2, r/2), ..., (N, C4, 4, 4)]``, of ``(N, 2, r, r)`` inputs."""
        start = self.sides.index(self.resolutions[stage])
        h = F.leaky_relu(self.from_image[stage](x), SLOPE)
        features = []
        for k, block in enumerate(self.blocks[start:]):
            h = block(h)
            if k == 0 and stage > 0 and alpha < 1.0:
                coarse = F.leaky_relu(self.from_image[stage - 1](F.avg_pool2d(x, 2)), SLOPE)
                h = alpha * h + (1 - alpha) * coarse
            features.append(h)
        return features

    def frame_features(self, frames: torch.Tensor, depth: int = 3) -> list[torch.Tensor]:
        """Appearance features of single frames ``(N, 1, r, r)`` (difference channel zero), the first `depth` blocks."""
        stage = self.resolutions.index(frames.shape[-1])
        x = torch.cat([frames, torch.zeros_like(frames)], dim=1)
        return self.trunk(x, stage)[:depth]

    def forward(self, frames: torch.Tensor, stage: int | None = None, alpha: float = 1.0) -> tuple[torch.Tensor, list[torch.Tensor]]:
        stage = len(self.resolutions) - 1 if stage is None else stage
        b, t = frames.shape[:2]
        features = self.trunk(with_differences(frames).flatten(0, 1), stage, alpha)
        h = features[-1].reshape(b, t, -1).transpose(1, 2)  # (B, C4 * 16, T)
        h = F.leaky_relu(self.temporal(h), SLOPE).mean(dim=2)
        return self.head(h)[:, 0], features
