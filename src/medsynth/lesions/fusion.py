"""Fusing lesions into a background image, as Tang et al. (2025) publish it, and a feathered variant.

Published method (``blend="published"``), in the data's units:

1. ``I_canvas`` is zero with the background's size; each lesion's pixels (its footprint mask) are
   written into its region, and ``R_lesion`` is the union of the footprints;
2. the background is set to 0 inside ``R_lesion`` and ``I_out = I_background + I_canvas``;
3. the seam is where the Sobel operator on the binary ``R_lesion`` mask is non-zero (a band two
   pixels wide across the contour); only there ``I_out`` is replaced by its 3x3 Gaussian smoothing
   (sigma 1.0).

``blend="feather"`` replaces the hard switch of step 2 by an alpha ramp that rises from the contour
to 1 at `feather_px` pixels inside the lesion (``I_out = (1 - a) I_background + a I_lesion``), then
smooths the seam band as step 3 does; benchmarks/bench_lesions.py compares the seams.

Inputs are never modified: every function returns new arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medsynth.errors import InputError
from medsynth.lesions.placement import Point, footprint_slices, inside_image

BLENDS = ("published", "feather")
SEAM_SIGMA = 1.0
# truncate=1 makes scipy's Gaussian exactly 3x3 (radius = round(truncate * sigma)), as published.
_SEAM_TRUNCATE = 1.0


@dataclass(frozen=True)
class Lesion:
    """A lesion patch: ``(h, w)`` float32 values in the data's units and its ``(h, w)`` boolean footprint."""

    values: np.ndarray
    mask: np.ndarray

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.values.shape != self.mask.shape:
            raise InputError(
                f"a lesion needs 2D values and a mask of the same shape, got {self.values.shape} and {self.mask.shape}"
            )


@dataclass(frozen=True)
class Blend:
    """How lesions are fused: the published hard seam or a feathered one (`feather_px` wide)."""

    name: str = "published"
    feather_px: float = 3.0


@dataclass(frozen=True)
class FusionResult:
    image: np.ndarray
    """``(H, W)`` float32 fused image in the background's units."""
    labels: np.ndarray
    """``(H, W)`` uint16 label map, one id per lesion, 0 elsewhere."""
    seam: np.ndarray
    """``(H, W)`` boolean seam band that was smoothed."""


def lesion_canvas(
    shape: tuple[int, int], lesions: Sequence[Lesion], centres: Sequence[Point], ids: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``I_canvas`` ``(H, W)`` float64 with the lesion pixels, and the ``(H, W)`` uint16 label map of ``R_lesion``."""
    if len(lesions) != len(centres):
        raise InputError(f"got {len(lesions)} lesions but {len(centres)} positions; give one position per lesion")
    ids = list(ids) if ids is not None else list(range(1, len(lesions) + 1))
    if len(ids) != len(lesions) or min(ids, default=1) < 1 or len(set(ids)) != len(ids):
        raise InputError(f"label ids {ids} must be distinct positive integers, one per lesion")
    canvas = np.zeros(shape, dtype=np.float64)
    labels = np.zeros(shape, dtype=np.uint16)
    for lesion, centre, label_id in zip(lesions, centres, ids):
        if not inside_image(centre, lesion.mask.shape, shape):
            raise InputError(
                f"lesion {label_id} at {tuple(centre)} of size {lesion.mask.shape[0]}x{lesion.mask.shape[1]} reaches "
                f"outside the {shape[0]}x{shape[1]} image; move it further inside"
            )
        rows, cols = footprint_slices(centre, lesion.mask.shape)
        canvas[rows, cols] = np.where(lesion.mask, lesion.values, canvas[rows, cols])
        labels[rows, cols] = np.where(lesion.mask, label_id, labels[rows, cols])
    return canvas, labels


def seam_band(region: np.ndarray) -> np.ndarray:
    """``(H, W)`` boolean band where the Sobel gradient of the binary `region` mask is non-zero."""
    mask = np.asarray(region, dtype=np.float64)
    return np.hypot(ndimage.sobel(mask, axis=0, mode="nearest"), ndimage.sobel(mask, axis=1, mode="nearest")) > 0


def smooth_seam(image: np.ndarray, band: np.ndarray) -> np.ndarray:
    """A copy of ``(H, W)`` `image` whose `band` pixels are replaced by the 3x3 Gaussian (sigma 1) smoothing."""
    image = np.asarray(image, dtype=np.float64)
    smoothed = ndimage.gaussian_filter(image, sigma=SEAM_SIGMA, truncate=_SEAM_TRUNCATE, mode="nearest")
    return np.where(band, smoothed, image)


def feather_alpha(region: np.ndarray, feather_px: float) -> np.ndarray:
    """``(H, W)`` weights of the lesion: 0 outside `region`, rising with the distance to the contour to 1."""
    if feather_px <= 0:
        raise InputError(f"feather width {feather_px} must be positive (pixels)")
    return np.clip(ndimage.distance_transform_edt(region) / feather_px, 0.0, 1.0)


def fuse(
    background: np.ndarray,
    lesions: Sequence[Lesion],
    centres: Sequence[Point],
    *,
    ids: Sequence[int] | None = None,
    blend: str = "published",
    feather_px: float = 3.0,
) -> FusionResult:
    """Fuse `lesions` centred at `centres` into a ``(H, W)`` `background`; see the module docstring."""
    background = np.asarray(background)
    if background.ndim != 2:
        raise InputError(f"fusion works on a 2D image, got shape {background.shape}; pick one slice of a volume")
    if blend not in BLENDS:
        raise InputError(f"unknown blend {blend!r}; choose one of {', '.join(BLENDS)}")
    canvas, labels = lesion_canvas(background.shape, lesions, centres, ids)
    region = labels > 0
    base = background.astype(np.float64)
    if blend == "published":
        fused = np.where(region, 0.0, base) + canvas
    else:
        alpha = feather_alpha(region, feather_px)
        fused = (1.0 - alpha) * base + alpha * canvas
    band = seam_band(region)
    return FusionResult(smooth_seam(fused, band).astype(np.float32), labels, band)
