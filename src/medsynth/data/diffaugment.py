"""Differentiable augmentation (DiffAugment, Zhao et al. 2020) of the images a discriminator sees.

On little data a discriminator memorises the real images within a few hundred steps and its
feedback to the generator collapses. Showing it randomly transformed images slows that down. The
transform must be applied to real and generated images alike, in the discriminator step and in the
generator step: a discriminator that saw only transformed real images would call untransformed
images fake, and the generator would learn to draw the transform (shifted anatomy, black squares).
Every transform here is differentiable in the images, so the generator's gradient passes through it;
each image gets its own independent draw, the real and the generated batch included.

Transforms, for one-channel images normalised to [-1, 1] whose background is -1:

- ``"translation"``: a whole-pixel shift of up to 1/8 of the side along each axis; uncovered pixels
  take the background value -1 (DiffAugment pads with 0, which is mid-grey here, not background).
- ``"cutout"``: a square of half the side, centred anywhere in the image (clipped at its border),
  set to the background value -1.
- ``"color"``: brightness + U(-0.5, 0.5), then contrast x U(0.5, 1.5) about the image's mean, as
  DiffAugment's colour transform without its saturation term (one channel has no saturation).

They run in that order, whatever the order of the policy's names. Random numbers come from torch's
global CPU generator, which the trainer seeds per step, so runs stay reproducible and resumable.
Items may be ``(B, C, H, W)`` or ``(B, 1, T, H, W)``: all channels and frames of an item get the same
transform.
"""

from __future__ import annotations

import itertools

import torch

TRANSFORMS = ("translation", "cutout", "color")
POLICIES = tuple(",".join(names) for size in (3, 2, 1) for names in itertools.combinations(TRANSFORMS, size))
"""Every valid policy: a comma-separated, non-empty subset of `TRANSFORMS` in that order."""
BACKGROUND = -1.0
TRANSLATION = 0.125
"""Largest shift, as a fraction of the side (DiffAugment's default)."""
CUTOUT = 0.5
"""Side of the cutout square, as a fraction of the image side (DiffAugment's default)."""


def policy_transforms(policy: str) -> tuple[str, ...]:
    """The transforms named in `policy` (e.g. ``"translation,cutout"``); ValueError naming unknown ones."""
    names = tuple(name.strip() for name in policy.split(",") if name.strip())
    unknown = [name for name in names if name not in TRANSFORMS]
    if unknown or not names:
        raise ValueError(
            f"augmentation policy {policy!r} names {', '.join(map(repr, unknown)) or 'no transform'}; "
            f"use a comma-separated subset of {', '.join(TRANSFORMS)}"
        )
    return names


def diff_augment(images: torch.Tensor, policy: str = POLICIES[0]) -> torch.Tensor:
    """`images` ``(B, ..., H, W)`` in [-1, 1] with the transforms of `policy`, each item drawn independently."""
    names = policy_transforms(policy)
    if "color" in names:
        images = brightness_contrast(images)
    if "translation" in names:
        images = translate(images)
    if "cutout" in names:
        images = cutout(images)
    return images


def _per_item(images: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``(B,)`` values drawn on the CPU, shaped to broadcast over `images` and moved to its device and dtype."""
    return values.view(-1, *([1] * (images.dim() - 1))).to(device=images.device, dtype=images.dtype)


def brightness_contrast(images: torch.Tensor) -> torch.Tensor:
    """Add U(-0.5, 0.5) to each item, then scale its deviations from its mean by U(0.5, 1.5)."""
    n = images.shape[0]
    shifted = images + _per_item(images, torch.rand(n) - 0.5)
    mean = shifted.mean(dim=tuple(range(1, images.dim())), keepdim=True)
    return (shifted - mean) * _per_item(images, torch.rand(n) + 0.5) + mean


def translate(images: torch.Tensor, ratio: float = TRANSLATION) -> torch.Tensor:
    """Shift each item by whole pixels, at most `ratio` of the side per axis; uncovered pixels become -1."""
    n, h, w = images.shape[0], *images.shape[-2:]
    flat = images.reshape(n, -1, h * w)
    max_dy, max_dx = round(h * ratio), round(w * ratio)
    dy = torch.randint(-max_dy, max_dy + 1, (n, 1, 1))
    dx = torch.randint(-max_dx, max_dx + 1, (n, 1, 1))
    # Output pixel (y, x) reads input pixel (y - dy, x - dx); gather keeps the shift differentiable.
    rows = torch.arange(h).view(1, h, 1) - dy
    cols = torch.arange(w).view(1, 1, w) - dx
    outside = ((rows < 0) | (rows >= h) | (cols < 0) | (cols >= w)).view(n, 1, h * w).to(images.device)
    source = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).view(n, 1, h * w).to(images.device)
    moved = flat.gather(2, source.expand(-1, flat.shape[1], -1))
    return moved.masked_fill(outside, BACKGROUND).reshape(images.shape)


def cutout(images: torch.Tensor, ratio: float = CUTOUT) -> torch.Tensor:
    """Set a square of `ratio` times the side, centred at a random pixel of each item, to -1."""
    n, h, w = images.shape[0], *images.shape[-2:]
    side_h, side_w = max(1, round(h * ratio)), max(1, round(w * ratio))
    top = torch.randint(0, h, (n, 1, 1)) - side_h // 2
    left = torch.randint(0, w, (n, 1, 1)) - side_w // 2
    rows, cols = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    inside = (rows >= top) & (rows < top + side_h) & (cols >= left) & (cols < left + side_w)
    flat = images.reshape(n, -1, h * w)
    return flat.masked_fill(inside.view(n, 1, h * w).to(images.device), BACKGROUND).reshape(images.shape)
