"""Bringing two image sets of different sizes to one size, for the distribution metrics.

A GAN trained on 233 x 197 slices generates 64 x 64 images: SWD, FID, KID and the temporal metric
compare the two sets as distributions, so they need one item size, not pairs. ``"fit"`` (the default)
brings each set to the smaller height and the smaller width of the two, the way training sees a slice
(`medsynth.data.datasets.fit_square`): padded, centred, to the target's aspect ratio with the set's
minimum (the background), then resized with anti-aliased bilinear interpolation. ``"off"`` leaves the
sets as they are, so that different sizes are refused.
"""

from __future__ import annotations

import numpy as np

from medsynth.errors import InputError

RESAMPLE_CHOICES = ("fit", "off")
DEFAULT_RESAMPLE = "fit"


def common_size(real: np.ndarray, fake: np.ndarray, method: str = DEFAULT_RESAMPLE) -> tuple[np.ndarray, np.ndarray]:
    """`real` and `fake` batches of 2D items ``(N, H, W)`` at one item size (see the module docstring).

    Batches whose items already agree, and any batch under ``method="off"``, come back unchanged.
    Raises InputError for an unknown method, and for volumes ``(N, D, H, W)`` of different shapes.
    """
    if method not in RESAMPLE_CHOICES:
        raise InputError(f"resample method {method!r} is unknown; choose one of {', '.join(RESAMPLE_CHOICES)}")
    if method == "off" or real.shape[1:] == fake.shape[1:]:
        return real, fake
    if real.ndim != 3 or fake.ndim != 3:
        raise InputError(
            f"real items of shape {real.shape[1:]} and fake items of shape {fake.shape[1:]} are volumes of "
            "different sizes, which are not resampled; compare them slice by slice or resample them to one size"
        )
    target = (min(real.shape[1], fake.shape[1]), min(real.shape[2], fake.shape[2]))
    return fit(real, target), fit(fake, target)


def fit(batch: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(N, H, W)`` padded to the aspect ratio of `shape` with its minimum, then resized to ``(N, *shape)``."""
    from skimage.transform import resize

    if batch.shape[1:] == tuple(shape):
        return batch
    height, width = batch.shape[1:]
    padded_height = max(height, round(width * shape[0] / shape[1]))
    padded_width = max(width, round(height * shape[1] / shape[0]))
    top, left = (padded_height - height) // 2, (padded_width - width) // 2
    pad = ((0, 0), (top, padded_height - height - top), (left, padded_width - width - left))
    padded = np.pad(batch, pad, constant_values=float(batch.min()))
    resized = resize(padded, (len(batch), *shape), order=1, anti_aliasing=True, preserve_range=True)
    return resized.astype(np.float32)
