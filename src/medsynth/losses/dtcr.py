"""Dynamic temporal consistency regularisation (DTCR) and its weight schedules.

For generated sequences ``(B, T, 1, H, W)`` one ``P x P`` patch is cut at a random place, the same
place in every frame of a clip, and the loss is::

    sum over layers l, frame pairs i of  mean((phi_l(f_i) - phi_l(f_{i+1}))^2),  averaged over clips

where ``phi_l`` are the activations of a feature network (ImageNet VGG, `vgg_features`, or, as a
weight-free fallback, the discriminator's own per-frame features), each pixel's feature vector
scaled to unit length over the channels as LPIPS does. That scaling gives every layer and both
feature networks the same range, so lambda means the same whatever the features (a discriminator's
raw activations are tiny early in training and would make the term vanish). Each squared distance
is divided by the layer's number of elements so that the loss does not depend on the patch size.

The weight lambda either rises linearly (`linear_weight`) or is adjusted on validation
(`adjusted_weight`): see the functions and docs/hrgan-dtcr.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from medsynth.errors import InputError

FeatureFn = Callable[[torch.Tensor], Sequence[torch.Tensor]]
"""Maps frames ``(N, 1, P, P)`` in [-1, 1] to activations ``[(N, C_l, H_l, W_l), ...]``."""

VGG_LAYERS = ("relu1_2", "relu2_2", "relu3_3")


def random_patches(frames: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, T, 1, size, size)`` patches of ``(B, T, 1, H, W)`` frames, one random place per clip for all its frames.

    Places come from torch's global generator (which the trainer seeds per step).
    """
    b, _, _, h, w = frames.shape
    if size > min(h, w):
        raise InputError(f"DTCR patch size {size} exceeds the frame size {h}x{w}; cap it at the resolution")
    tops = torch.randint(0, h - size + 1, (b,)).tolist()
    lefts = torch.randint(0, w - size + 1, (b,)).tolist()
    return torch.stack([clip[..., t : t + size, l : l + size] for clip, t, l in zip(frames, tops, lefts)])


def unit_channels(activation: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``(N, C, H, W)`` activations with each pixel's C-vector scaled to unit length (zero vectors stay zero)."""
    return activation / (activation.pow(2).sum(dim=1, keepdim=True) + eps).sqrt()


def consistency_penalty(patches: torch.Tensor, features: FeatureFn) -> torch.Tensor:
    """The DTCR sum of ``(B, T, 1, P, P)`` patches (see the module docstring), a scalar."""
    b, t = patches.shape[:2]
    if t < 2:
        raise InputError(f"DTCR needs sequences of at least 2 frames, got {t}")
    total = patches.new_zeros(())
    for activation in features(patches.flatten(0, 1)):
        per_frame = unit_channels(activation).reshape(b, t, -1)
        pair_distance = (per_frame[:, 1:] - per_frame[:, :-1]).pow(2).mean(dim=2)  # (B, T - 1)
        total = total + pair_distance.sum(dim=1).mean()
    return total


def dtcr_loss(frames: torch.Tensor, features: FeatureFn, patch_size: int = 64) -> torch.Tensor:
    """DTCR of ``(B, T, 1, H, W)`` frames on random patches of side ``min(patch_size, H, W)``."""
    size = min(patch_size, frames.shape[-2], frames.shape[-1])
    return consistency_penalty(random_patches(frames, size), features)


def vgg_features(vgg: torch.nn.Module, layers: tuple[str, ...] = VGG_LAYERS) -> FeatureFn:
    """A `FeatureFn` from `medsynth.models.vgg.VGGFeatures`: frames in [-1, 1] are mapped to its [0, 1] input."""

    def features(frames: torch.Tensor) -> list[torch.Tensor]:
        out = vgg((frames + 1) / 2, layers)
        return [out[name] for name in layers]

    return features


def linear_weight(step: int, start: float, end: float, ramp_steps: int) -> float:
    """lambda rising linearly from `start` at step 0 to `end` at `ramp_steps`, constant afterwards."""
    return start + (end - start) * min(1.0, step / max(1, ramp_steps))


def mean_frame_difference(frames: torch.Tensor) -> float:
    """Mean absolute difference of consecutive frames of ``(B, T, 1, H, W)`` sequences (normalised units)."""
    return float((frames[:, 1:] - frames[:, :-1]).abs().mean())


def adjusted_weight(
    weight: float,
    fake_motion: float,
    real_motion: float,
    low: float,
    high: float,
    tolerance: float = 0.1,
    factor: float = 1.25,
) -> float:
    """The "adjusted on validation" rule: one multiplicative step of lambda towards real motion.

    When held-out generated sequences change from frame to frame more than the real data (by more
    than `tolerance`, relative), lambda is multiplied by `factor`; when they change less (frozen
    sequences), it is divided by it; otherwise it is kept. The result stays within [low, high].
    """
    if real_motion <= 0:
        return weight
    ratio = fake_motion / real_motion
    if ratio > 1 + tolerance:
        weight *= factor
    elif ratio < 1 - tolerance:
        weight /= factor
    return min(high, max(low, weight))
