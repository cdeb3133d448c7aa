"""AttnMix: CutMix-style mixing of real and generated images, and the discriminator's consistency on the mix.

After the CutMix regularisation of the U-Net GAN (Schonfeld et al. 2020) with HAGAN's attention-
guided placement (Ju et al. 2024). A mask ``M`` (1: real, 0: generated) holds one box per image;
the mix of augmented images is ``M * T(real) + (1 - M) * T(fake)``. The discriminator is asked

- to call the mix fake at the image level and to label its pixels ``M`` (`mix_loss`), and
- to be consistent: its per-pixel logits on the mix should equal the mix of its per-pixel logits on
  ``T(real)`` and ``T(fake)`` (`consistency_loss`), i.e.
  ``|| D_pix(mix(T(x), T(G(z)), M)) - mix(D_pix(T(x)), D_pix(T(G(z))), M) ||^2``.

Box placement (`box_masks`): its area is a fraction U(0, 1) of the image, its aspect that of the
image. In ``"cutmix"`` mode it lies anywhere; in ``"attention"`` mode it is placed where the
discriminator is most sure of the image it is pasted into: a box of real content goes where the
discriminator finds the generated image most fake, a box of generated content where it finds the
real image most real (the largest sum of that saliency over the box). Random boxes mostly cover
regions the discriminator judges easily; the attention-placed box covers the evidence it leans on
most, so that is where it must learn to tell content from position. Which image fills the box is
a fair coin per image, as in the U-Net GAN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MIX_MODES = ("attention", "cutmix")


def box_masks(
    n: int,
    size: int,
    mode: str = "cutmix",
    real_logits: torch.Tensor | None = None,
    fake_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(n, 1, size, size)`` masks, 1 on real pixels, one box per image; see the module docstring.

    `real_logits` and `fake_logits` ``(n, 1, h, w)``, the discriminator's local logits on the images
    to be mixed, are required in ``"attention"`` mode (they are resized to `size`).
    """
    if mode not in MIX_MODES:
        raise ValueError(f"mix mode {mode!r} is not one of {', '.join(MIX_MODES)}")
    sides = (size * torch.rand(n).sqrt()).round().clamp(1, size).long()
    real_inside = torch.rand(n) < 0.5
    if mode == "attention":
        if real_logits is None or fake_logits is None:
            raise ValueError("attention mixing needs the discriminator's logits on the real and the generated images")
        # Real content goes where the fake looks most fake (-logit); fake content where the real looks most real.
        saliency = torch.where(real_inside.view(n, 1, 1, 1).to(fake_logits.device), -fake_logits, real_logits)
        saliency = F.interpolate(saliency.detach().float(), size=(size, size), mode="bilinear", align_corners=False)
        corners = [_most_salient_box(saliency[i, 0], int(side)) for i, side in enumerate(sides)]
        top, left = (torch.tensor(c) for c in zip(*corners))
    else:
        top = (torch.rand(n) * (size - sides + 1)).long()
        left = (torch.rand(n) * (size - sides + 1)).long()
    rows, cols = torch.arange(size).view(1, size, 1), torch.arange(size).view(1, 1, size)
    top, left, sides = top.view(n, 1, 1), left.view(n, 1, 1), sides.view(n, 1, 1)
    box = (rows >= top) & (rows < top + sides) & (cols >= left) & (cols < left + sides)
    return (box == real_inside.view(n, 1, 1)).float()[:, None]


def _most_salient_box(saliency: torch.Tensor, side: int) -> tuple[int, int]:
    """(top, left) of the `side` x `side` box of ``(H, W)`` `saliency` with the largest sum."""
    sums = F.avg_pool2d(saliency[None, None], side, stride=1)[0, 0]
    index = int(sums.argmax())
    return index // sums.shape[1], index % sums.shape[1]


def mix(real: torch.Tensor, fake: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mask * real + (1 - mask) * fake`` with `mask` ``(B, 1, H, W)`` resized (area average) to their size."""
    if mask.shape[-2:] != real.shape[-2:]:
        mask = F.adaptive_avg_pool2d(mask, real.shape[-2:])
    mask = mask.to(real.dtype)
    return mask * real + (1 - mask) * fake


def mix_loss(image_logits: torch.Tensor, local_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BCE of the discriminator on a mix: fake at the image level, ``mask`` (area-averaged to its grid) per location."""
    target = F.adaptive_avg_pool2d(mask, local_logits.shape[-2:]).to(local_logits.dtype)
    image = F.binary_cross_entropy_with_logits(image_logits, torch.zeros_like(image_logits))
    return image + F.binary_cross_entropy_with_logits(local_logits, target)


def consistency_loss(
    mixed_logits: torch.Tensor, real_logits: torch.Tensor, fake_logits: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean squared difference of local logits on the mix and the mix of local logits ``(B, 1, h, w)``."""
    return F.mse_loss(mixed_logits, mix(real_logits, fake_logits, mask))
