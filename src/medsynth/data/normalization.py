"""Intensity normalisation: a linear map of data values (HU, MR intensity) to [-1, 1] and back.

Networks train on values in [-1, 1]; the map is stored in every checkpoint and inverted on output so
that generated images come back in the units of the training data. `NormalizationOptions` is how a
training run chooses the map: declared once, it is part of `medsynth.training.config.TrainConfig`,
the Train widget's Normalisation form and ``medsynth train``'s flags.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from medsynth.errors import InputError
from medsynth.settings import setting

# Enough values for stable 0.5 / 99.5 percentiles while reading only a strided subset of big arrays.
MAX_PERCENTILE_VALUES = 2_000_000
NORMALIZATIONS = ("percentile", "window")
NORMALIZATION_FIELDS = {
    "percentile": ("percentile_low", "percentile_high"),
    "window": ("window_center", "window_width"),
}
"""The fields of `NormalizationOptions` each method uses (a form hides the others)."""


@dataclass(frozen=True)
class Normalization:
    """Data values in ``[low, high]`` map linearly to ``[-1, 1]``; values outside are clipped."""

    low: float
    high: float
    method: str = "percentile"
    """How `low` and `high` were chosen: ``"percentile"``, ``"window"`` or ``"minmax"`` (informational)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.high <= self.low:
            raise InputError(
                f"intensity range [{self.low}, {self.high}] is empty or not finite: the training data may be "
                "constant, or the window/percentiles are wrong; choose a window with width > 0"
            )

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Data units -> float32 in [-1, 1] (any shape)."""
        scaled = (np.asarray(values, dtype=np.float32) - self.low) * (2.0 / (self.high - self.low)) - 1.0
        return np.clip(scaled, -1.0, 1.0, out=scaled)

    def invert(self, values: np.ndarray) -> np.ndarray:
        """[-1, 1] -> float32 data units (any shape); values outside [-1, 1] are clipped first."""
        clipped = np.clip(np.asarray(values, dtype=np.float32), -1.0, 1.0)
        return ((clipped + 1.0) * (0.5 * (self.high - self.low)) + self.low).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Normalization:
        return cls(low=float(values["low"]), high=float(values["high"]), method=str(values.get("method", "")))


@dataclass(kw_only=True)
class NormalizationOptions:
    """How a training run maps intensities to the networks' [-1, 1].

    Recipes trained on a lesion crop (SinGAN) ignore it: the crop is mapped by its own minimum and maximum.
    """

    normalization: str = setting(
        "percentile",
        "Clip intensities at percentiles of the data, or at a fixed window in data units (CT in HU)",
        choices=NORMALIZATIONS,
    )
    percentile_low: float = setting(0.5, "Lower clipping percentile", min=0, max=100)
    percentile_high: float = setting(99.5, "Upper clipping percentile", min=0, max=100)
    window_center: float = setting(40.0, "Window centre in data units (40 HU: soft tissue)")
    window_width: float = setting(400.0, "Window width in data units (400 HU: soft tissue)", min=1e-6)

    def percentile_problems(self) -> list[str]:
        """What the declared ranges cannot say: the lower percentile must lie below the upper one."""
        if self.normalization == "percentile" and not self.percentile_low < self.percentile_high:
            return [
                f"percentile_low={self.percentile_low!r} must be below percentile_high={self.percentile_high!r}"
            ]
        return []

    def changed_normalization(self) -> list[str]:
        """The options set to other values than their defaults (``name=value``), for refusing them where unused."""
        return [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(NormalizationOptions)
            if getattr(self, f.name) != f.default
        ]

    def fit_normalization(self, arrays: Sequence[Any]) -> Normalization:
        """The map these options choose for the training data `arrays` (read only for percentiles)."""
        if self.normalization == "window":
            return window_normalization(self.window_center, self.window_width)
        return percentile_normalization(arrays, self.percentile_low, self.percentile_high)


def window_normalization(center: float, width: float) -> Normalization:
    """A CT-style window: ``[center - width/2, center + width/2]`` -> [-1, 1] (e.g. soft tissue 40/400 HU)."""
    if not width > 0:
        raise InputError(
            f"window width {width} must be positive; give the window as (center, width), e.g. (40, 400) for soft tissue"
        )
    return Normalization(center - width / 2.0, center + width / 2.0, method="window")


def minmax_normalization(values: np.ndarray) -> Normalization:
    """The exact minimum and maximum of `values` -> [-1, 1], nothing clipped (a SinGAN lesion crop)."""
    values = np.asarray(values, dtype=np.float32)
    if values.size == 0 or not np.isfinite(values).all():
        raise InputError("the values hold NaN or infinite values (or none at all); choose a region of valid pixels")
    low, high = float(values.min()), float(values.max())
    if high <= low:
        raise InputError(f"the values are constant ({low}); choose a region that shows some contrast")
    return Normalization(low, high, method="minmax")


def percentile_normalization(arrays: Sequence[Any], lower: float = 0.5, upper: float = 99.5) -> Normalization:
    """Clip at the `lower` and `upper` percentiles of all values of `arrays` (numpy, memmap or dask).

    Big arrays are subsampled with a regular stride so that at most about `MAX_PERCENTILE_VALUES`
    values are read.
    """
    if not 0.0 <= lower < upper <= 100.0:
        raise InputError(f"percentiles ({lower}, {upper}) must satisfy 0 <= lower < upper <= 100")
    budget = max(1, MAX_PERCENTILE_VALUES // max(1, len(arrays)))
    values = np.concatenate([_strided_values(a, budget) for a in arrays])
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise InputError("the training data holds no finite values; check the input images")
    low, high = np.percentile(finite, [lower, upper])
    return Normalization(float(low), float(high), method="percentile")


def _strided_values(array: Any, budget: int) -> np.ndarray:
    """About `budget` values of `array`, one every `stride` along each axis, as float32 (1D)."""
    size = math.prod(array.shape)
    stride = max(1, math.ceil((size / budget) ** (1.0 / max(1, len(array.shape)))))
    index = tuple(slice(None, None, stride) for _ in array.shape)
    return np.asarray(array[index], dtype=np.float32).ravel()
