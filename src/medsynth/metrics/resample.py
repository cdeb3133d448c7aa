"""Two image sets of different sizes brought to one, for the distribution metrics (SWD, FID, KID, temporal).

A GAN trained on 233x197 MNI152 slices generates 64x64 images. The distribution metrics compare such
sets after resampling every 2D image of both to a common ``side x side``:

- the common side is by default the smaller of the two sets' longer sides: the larger images are
  shrunk, never the smaller ones enlarged (enlarging adds no detail, and the blur it adds would be
  held against them);
- method ``"pad"`` (default): each image is padded to a centred square with the background value (the
  lower end of the data range, i.e. the real set's minimum unless a range is given), keeping its
  aspect ratio, then resized with antialiased bilinear interpolation (torch's
  ``interpolate(mode="bilinear", antialias=True)``). This is how training prepares the real slices
  (`medsynth.data.datasets.fit_square`), so a model's samples are compared with the real data as the
  model saw it;
- method ``"stretch"``: each image is resized to the square directly, its aspect ratio not kept.

Volumes are resampled slice by slice (their 2D images), as the distribution metrics score them.
`Resampled` does it lazily, a batch at a time, so large sets are never resampled whole.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medsynth.data.datasets import pad_square
from medsynth.errors import InputError

METHODS = {
    "pad": "padded to squares with the background, antialiased bilinear",
    "stretch": "stretched to squares, antialiased bilinear",
}
"""The resampling methods, each with the few words that say what it did in a result's note."""
RESAMPLE_METHODS = tuple(METHODS)
DEFAULT_METHOD = "pad"


def common_side(real_shape: tuple[int, ...], fake_shape: tuple[int, ...]) -> int:
    """The default common side of two sets of 2D images of shapes ``(..., H, W)``: the smaller longer side."""
    return min(max(real_shape[-2:]), max(fake_shape[-2:]))


def resample_images(images: np.ndarray, side: int, method: str = DEFAULT_METHOD, fill: float = 0.0) -> np.ndarray:
    """``(M, H, W)`` images -> ``(M, side, side)`` float32 by `method` (see the module docstring)."""
    check_options(method, side)
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    if method == "pad":
        x = pad_square(x, fill)
    if tuple(x.shape[-2:]) != (side, side):
        x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return x[:, 0].numpy()


def check_options(method: str, side: int | None = None) -> None:
    """InputError for an unknown method or a side below one pixel (None: the default side)."""
    if method not in RESAMPLE_METHODS:
        raise InputError(f"resample method {method!r} is not one of {', '.join(RESAMPLE_METHODS)}")
    if side is not None and side < 1:
        raise InputError(f"resample side {side} must be at least 1 pixel")


class Resampled:
    """The 2D images of a batch, resampled to ``side x side`` when indexed: ``(M, side, side)``.

    `items` is ``(N, H, W)`` or ``(N, D, H, W)`` (M = N or N * D) and anything that indexes like an
    array (numpy, a memory map, a `medsynth.metrics.items.ItemStack`); it is read only for the images
    asked for.
    """

    def __init__(self, items: Any, side: int, method: str = DEFAULT_METHOD, fill: float = 0.0) -> None:
        check_options(method, side)
        self.items = items.as_images() if hasattr(items, "as_images") else items
        self.lead = tuple(self.items.shape[:-2])
        self.side, self.method, self.fill = side, method, fill
        self.shape = (math.prod(self.lead), side, side)
        self.ndim = 3

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        from medsynth.metrics.items import leading_runs

        if isinstance(key, tuple) and len(key) == 1:
            key = key[0]
        if isinstance(key, (int, np.integer)):
            k = int(key) + (len(self) if key < 0 else 0)
            return self[k : k + 1][0]
        if not isinstance(key, slice):
            raise IndexError("resampled images are read by item or by a slice of items")
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise IndexError("resampled images are read in runs of consecutive items (slice step 1)")
        pieces = [np.asarray(self.items[index], dtype=np.float32) for _, index in leading_runs(self.lead, start, stop)]
        images = np.concatenate(pieces) if pieces else np.empty((0, *self.items.shape[-2:]), dtype=np.float32)
        return resample_images(images, self.side, self.method, self.fill)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[0 : len(self)]
        return whole if dtype is None else whole.astype(dtype, copy=False)
