"""Input batches of the numpy-based metrics: numpy arrays or torch tensors on any device, checked once."""

from __future__ import annotations

import numpy as np

from medsynth.errors import InputError

BATCH_SHAPES = "a batch of images (N, H, W) or of volumes (N, D, H, W)"


def finite_array(
    x: object, name: str, what: str, *, ndims: tuple[int, ...] = (3, 4), shapes: str = BATCH_SHAPES, dtype=None
) -> np.ndarray:
    """`x` as a numpy array (of `dtype`, if given) with one of `ndims` dimensions and only finite numbers.

    `x` may be a tensor on any device (moved to the CPU without importing torch here). The `InputError`
    for a wrong shape or NaN / infinite values names the metric (`what`), the argument (`name`) and
    the expected `shapes`.
    """
    arr = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)
    if arr.ndim not in ndims or arr.shape[0] == 0:
        raise InputError(f"{what}: {name} has shape {arr.shape}; give {shapes}")
    if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)):
        raise InputError(f"{what}: {name} contains NaN, infinite or non-numeric values; mask or replace them first")
    return arr if dtype is None else arr.astype(dtype, copy=False)
