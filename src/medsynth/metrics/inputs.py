"""Metric inputs, checked once: data ranges, and batches as numpy arrays or torch tensors on any device.

Two forms serve the two kinds of metric:

- `as_items` / `as_pair`: float torch tensors ``(M, *spatial)`` on the inputs' device (or a chosen
  one), for the metrics computed in torch (PSNR, SSIM, MS-SSIM, FID, KID, LPIPS);
- `finite_array`: a numpy array on the CPU, for those computed with numpy and scipy (SWD, sharpness,
  temporal consistency, `evaluate`).

This module imports torch only inside the torch helpers, so that ``import medsynth.metrics`` (which
loads the numpy-based metrics) stays free of it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Union

import numpy as np

from medsynth.errors import InputError

if TYPE_CHECKING:
    import torch

ArrayLike = Union[np.ndarray, "torch.Tensor"]
DataRange = float | tuple[float, float]

BATCH_SHAPES = "a batch of images (N, H, W) or of volumes (N, D, H, W)"


def data_range_bounds(data_range: DataRange) -> tuple[float, float]:
    """``(lo, hi)`` of a data range given as a span ``L`` (meaning ``(0, L)``) or a tuple."""
    if isinstance(data_range, (tuple, list)):
        if len(data_range) != 2:
            raise InputError(f"data_range {data_range!r} must be a span L or a (min, max) pair")
        lo, hi = (float(v) for v in data_range)
    elif isinstance(data_range, (int, float, np.number)) and not isinstance(data_range, bool):
        lo, hi = 0.0, float(data_range)
    else:
        raise InputError(
            f"data_range {data_range!r} must be a number (the span, e.g. 255 or 1.0) or a (min, max) pair "
            "such as (-1024, 3071) for CT in HU"
        )
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        raise InputError(
            f"data_range {data_range!r} must be finite with max > min (a positive span); give the range the "
            "data can take, e.g. 1.0 for [0, 1] images or (-1024, 3071) for CT in HU"
        )
    return lo, hi


def to_unit_range(x: torch.Tensor, data_range: DataRange) -> torch.Tensor:
    """`x` (any shape) mapped from `data_range` to [0, 1] and clipped there, as pretrained networks expect."""
    lo, hi = data_range_bounds(data_range)
    return ((x - lo) / (hi - lo)).clamp(0, 1)


def as_items(
    x: ArrayLike,
    name: str,
    spatial_dims: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """`x` as a float tensor ``(M, *spatial)`` (float64 unless `dtype`), its leading (item) axes flattened.

    Stays on the tensor's device unless `device` is given (numpy arrays go to the CPU). Raises
    `InputError` naming `name` for non-numeric or non-finite values or too few axes.
    """
    import torch

    dtype = dtype or torch.float64
    if isinstance(x, torch.Tensor):
        t = x.detach().to(device=device if device is not None else x.device, dtype=dtype)
    else:
        a = np.asarray(x)
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_) or np.iscomplexobj(a):
            raise InputError(f"{name} has dtype {a.dtype}; metrics need real-valued numeric images")
        # Converted by numpy, in one pass that also makes views with negative strides (x[::-1])
        # contiguous: on a busy CPU torch's multi-threaded conversion is several times slower.
        a = np.ascontiguousarray(a, dtype=torch.empty((), dtype=dtype).numpy().dtype)
        t = torch.from_numpy(a).to(device=device)
    spatial_dims = t.ndim - 1 if spatial_dims is None else spatial_dims
    if spatial_dims not in (2, 3) or t.ndim < spatial_dims:
        raise InputError(
            f"{name} has shape {tuple(t.shape)}; expected (N, H, W) images or (N, D, H, W) volumes "
            f"(spatial_dims 2 or 3, got {spatial_dims})"
        )
    finite = np.isfinite(t.numpy()) if t.device.type == "cpu" else torch.isfinite(t)
    if not finite.all():
        raise InputError(f"{name} contains {int((~finite).sum())} NaN or infinite values; metrics need finite images")
    return t.reshape(-1, *t.shape[t.ndim - spatial_dims :])


def pair_shapes(real: object, fake: object, spatial_dims: int | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(leading, spatial)`` shapes of a pair of batches (anything with a ``shape``), without reading them.

    InputError when the shapes differ or `spatial_dims` is not 2 or 3 (or more than the batches have).
    """
    shape, other = tuple(real.shape), tuple(fake.shape)
    if shape != other:
        raise InputError(
            f"real and fake have different shapes {shape} and {other}; paired metrics compare each real item "
            "with the fake item of the same index, so shapes must match"
        )
    spatial_dims = len(shape) - 1 if spatial_dims is None else spatial_dims
    if spatial_dims not in (2, 3) or len(shape) < spatial_dims:
        raise InputError(
            f"real and fake have shape {shape}; expected (N, H, W) images or (N, D, H, W) volumes "
            f"(spatial_dims 2 or 3, got {spatial_dims})"
        )
    return shape[: len(shape) - spatial_dims], shape[len(shape) - spatial_dims :]


def as_pair(
    real: ArrayLike, fake: ArrayLike, spatial_dims: int | None, device: torch.device | str | None
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """Both inputs as ``(M, *spatial)`` float64 tensors on one device, and the items' leading shape.

    The device is `device`, else the real tensor's, else the CPU.
    """
    import torch

    real, fake = (x if isinstance(x, torch.Tensor) else np.asarray(x) for x in (real, fake))
    leading, _ = pair_shapes(real, fake, spatial_dims)
    if device is None and isinstance(real, torch.Tensor):
        device = real.device
    r = as_items(real, "real", spatial_dims, device)
    f = as_items(fake, "fake", spatial_dims, r.device)
    return r, f, leading


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


RANGE_PIECE_VOXELS = 2**22
"""Voxels read at a time by `finite_range` (16 MiB of float32)."""


def finite_range(x: object, name: str, what: str) -> tuple[float, float]:
    """``(min, max)`` of a batch ``(N, H, W)`` or ``(N, D, H, W)``, read a piece at a time.

    `x` is anything with a ``shape`` that indexes like an array (numpy, a memory map, a tensor, an
    `medsynth.metrics.items.ItemStack`). `InputError` as `finite_array` for a wrong shape or NaN,
    infinite or non-numeric values.
    """
    from medsynth.metrics.items import item_pieces

    shape = tuple(x.shape)
    if len(shape) not in (3, 4) or shape[0] == 0:
        raise InputError(f"{what}: {name} has shape {shape}; give {BATCH_SHAPES}")
    lo, hi = math.inf, -math.inf
    for _, index in item_pieces(shape[:1], shape[1:], budget=RANGE_PIECE_VOXELS, slab=RANGE_PIECE_VOXELS):
        piece = finite_array(x[index], name, what, ndims=(len(shape),))
        lo, hi = min(lo, float(piece.min())), max(hi, float(piece.max()))
    return lo, hi
