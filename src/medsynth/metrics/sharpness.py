"""Sharpness and fusion measures: spatial frequency (SF) and the sum of the correlations of differences (SCD).

- SF (Eskicioglu & Fisher 1995): ``sqrt(RF^2 + CF^2)`` with the row frequency
  ``RF^2 = 1/(M N) * sum_{m, n >= 2} (F[m, n] - F[m, n-1])^2`` and the column frequency ``CF`` the
  same along columns. For volumes the slice direction adds a third term. It is in the image's
  intensity units per pixel; higher means more fine detail (sharper, or noisier).
- SCD (Aslantas & Bendes 2015): for a fused image ``F`` made from sources ``A`` and ``B``,
  ``corr(F - B, A) + corr(F - A, B)`` with Pearson's correlation over all pixels: how much of each
  source the fused image carries beyond the other one. Range [-2, 2], higher is better.
"""

from __future__ import annotations

import numpy as np

from medsynth.errors import InputError
from medsynth.metrics.inputs import finite_array


def spatial_frequency(images: object) -> np.ndarray:
    """SF per item of ``(N, H, W)`` images or ``(N, D, H, W)`` volumes -> ``(N,)``."""
    arr = finite_array(images, "images", "SF", dtype=np.float64)
    spatial_axes = tuple(range(1, arr.ndim))
    size = np.prod(arr.shape[1:])
    # Each squared-difference sum is divided by the full pixel count, as in the original definition.
    terms = [np.sum(np.diff(arr, axis=ax) ** 2, axis=spatial_axes) / size for ax in spatial_axes]
    return np.sqrt(np.sum(terms, axis=0))


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation per item of two ``(N, ...)`` arrays; 0 where either item is constant."""
    axes = tuple(range(1, x.ndim))
    xc = x - x.mean(axis=axes, keepdims=True)
    yc = y - y.mean(axis=axes, keepdims=True)
    denom = np.sqrt(np.sum(xc**2, axis=axes) * np.sum(yc**2, axis=axes))
    num = np.sum(xc * yc, axis=axes)
    return np.divide(num, denom, out=np.zeros_like(num), where=denom > 0)


def scd(fused: object, source_a: object, source_b: object) -> np.ndarray:
    """SCD per item: ``corr(F - B, A) + corr(F - A, B)`` for ``(N, H, W)`` or ``(N, D, H, W)`` batches -> ``(N,)``.

    A constant difference or source has no defined correlation; its term counts as 0.
    """
    f = finite_array(fused, "fused", "SCD", dtype=np.float64)
    a = finite_array(source_a, "source_a", "SCD", dtype=np.float64)
    b = finite_array(source_b, "source_b", "SCD", dtype=np.float64)
    if not f.shape == a.shape == b.shape:
        raise InputError(f"SCD: fused {f.shape}, source_a {a.shape} and source_b {b.shape} must have the same shape")
    return _pearson(f - b, a) + _pearson(f - a, b)
