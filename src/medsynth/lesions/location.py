"""The location prior ``C_loc``: a kernel-density estimate over historical lesion positions.

Each connected component of each label id in the historical label maps contributes its centroid,
stored as fractions of the image height and width so that maps of any size combine and the prior
applies to backgrounds of any size. The density is a Gaussian-blurred histogram of the centroids
(a KDE with a diagonal Gaussian kernel, binned to pixels): the bandwidth per axis follows Scott's
rule ``sd * n ** (-1 / 6)``, never below `MIN_BANDWIDTH` of the side so that one or two annotations
still give a usable prior. Candidates are the top-k density peaks after non-maximum suppression.

The prior is saved as a small JSON file (written atomically), one kind of ``--location-model`` of the
CLI; the other is a ``lesion-heatmap`` checkpoint (`medsynth.lesions.learned.HeatmapModel`). Both are a
`LocationModel`: a heatmap over a background plane, whose top-k peaks are the candidates
(`top_candidates`); `medsynth.lesions.learned.load_location_model` reads either file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max

from medsynth.atomic import write_text
from medsynth.data.geometry import lesion_centroids
from medsynth.errors import CheckpointError, InputError
from medsynth.settings import setting

FORMAT = "medsynth-location-prior"
FORMAT_VERSION = 1
MIN_BANDWIDTH = 0.03
"""Smallest kernel width, as a fraction of the image side."""


class LocationModel(Protocol):
    """Where lesions are likely on a background plane: the kernel-density prior or a learned heatmap."""

    def plane_heatmap(self, plane: np.ndarray) -> np.ndarray:
        """``(H, W)`` float32 density over the pixels of an ``(H, W)`` plane in data units (sums to 1)."""
        ...

    def describe(self) -> str:
        """A few words for a status line, e.g. "location prior from 12 lesions"."""
        ...


@dataclass
class PriorOptions:
    """How a location model's heatmap becomes candidate positions."""

    top_k: int = setting(10, "Candidate positions: the top-k peaks of the prior", min=1, max=10_000)
    min_distance: int = setting(5, "Minimum distance between candidates (px)", min=1, max=10_000)


def prior_candidates(
    model: LocationModel, plane: np.ndarray, options: PriorOptions
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The heatmap ``(H, W)`` of `model` on `plane`, its top-k candidates ``(k', 2)`` and their densities ``(k',)``."""
    heat = model.plane_heatmap(plane)
    return (heat, *top_candidates(heat, options.top_k, options.min_distance))


def top_candidates(heat: np.ndarray, k: int, min_distance: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Top-`k` peaks ``(k', 2)`` (y, x) of an ``(H, W)`` heatmap at least `min_distance` px apart, and their densities ``(k',)``."""
    if k < 1:
        raise InputError(f"the number of candidates k={k} must be at least 1")
    peaks = peak_local_max(heat, min_distance=max(1, int(min_distance)), num_peaks=k, exclude_border=False)
    return peaks, heat[peaks[:, 0], peaks[:, 1]]


@dataclass(frozen=True)
class LocationPrior:
    points: np.ndarray
    """``(N, 2)`` lesion centroids as (y, x) fractions of the image height and width, in [0, 1)."""
    bandwidth: tuple[float, float]
    """Kernel standard deviation per axis, as a fraction of the image height and width."""

    def heatmap(self, shape: tuple[int, int]) -> np.ndarray:
        """``(H, W)`` float32 density over the pixels of an image of `shape` (sums to 1)."""
        counts = np.zeros(shape, dtype=np.float64)
        rows = np.clip((self.points[:, 0] * shape[0]).astype(int), 0, shape[0] - 1)
        cols = np.clip((self.points[:, 1] * shape[1]).astype(int), 0, shape[1] - 1)
        np.add.at(counts, (rows, cols), 1.0)
        sigma = (self.bandwidth[0] * shape[0], self.bandwidth[1] * shape[1])
        density = ndimage.gaussian_filter(counts, sigma=sigma, mode="constant")
        return (density / max(density.sum(), np.finfo(float).tiny)).astype(np.float32)

    def candidates(self, shape: tuple[int, int], k: int, min_distance: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` peaks ``(k', 2)`` (y, x) of the heatmap at least `min_distance` px apart, and their densities ``(k',)``."""
        return top_candidates(self.heatmap(shape), k, min_distance)

    def plane_heatmap(self, plane: np.ndarray) -> np.ndarray:
        """`heatmap` of the plane's shape: the prior knows positions only, not the image."""
        return self.heatmap(np.shape(plane)[-2:])

    def describe(self) -> str:
        return f"location prior from {len(self.points)} lesions"

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "points": self.points.tolist(),
            "bandwidth": list(self.bandwidth),
        }


def fit_location_prior(label_maps: Sequence[np.ndarray]) -> LocationPrior:
    """A prior from the lesions in ``(H, W)`` or ``(Z, H, W)`` label maps (any sizes)."""
    fractions = [
        lesion_centroids(labels) / np.asarray(np.shape(labels)[-2:], dtype=float) for labels in label_maps
    ]
    points = np.concatenate(fractions) if fractions else np.zeros((0, 2))
    if len(points) == 0:
        raise InputError("the label maps hold no lesions (all zero); give label maps with annotated lesions")
    scott = points.std(axis=0) * len(points) ** (-1.0 / 6.0)
    bandwidth = tuple(float(max(b, MIN_BANDWIDTH)) for b in scott)
    return LocationPrior(points=points, bandwidth=bandwidth)


def save_location_prior(prior: LocationPrior, path: str | os.PathLike[str]) -> Path:
    """Write `prior` as JSON atomically; return the path."""
    return write_text(path, json.dumps(prior.to_dict()))


def load_location_prior(path: str | os.PathLike[str]) -> LocationPrior:
    """Read a prior written by `save_location_prior`; CheckpointError when the file is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"format is {data.get('format')!r}")
        if int(data["version"]) > FORMAT_VERSION:
            raise CheckpointError(
                f"{path}: location prior version {data['version']} is newer than this medsynth reads "
                f"({FORMAT_VERSION}); update medsynth"
            )
        points = np.asarray(data["points"], dtype=float).reshape(-1, 2)
        bandwidth = tuple(float(b) for b in data["bandwidth"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{path}: not a medsynth location prior ({exc}); make one with "
            "`medsynth lesions ... --location-labels MASK...` or `fit_location_prior`"
        ) from exc
    refit = "fit it again with `medsynth lesions ... --location-labels MASK...`, or correct the file"
    if len(bandwidth) != 2 or not all(np.isfinite(b) and b > 0 for b in bandwidth):
        raise CheckpointError(
            f"{path}: bandwidth {list(bandwidth)} must be two finite numbers above 0 (kernel widths as fractions "
            f"of the image height and width, at least {MIN_BANDWIDTH} when fitted); {refit}"
        )
    if len(points) == 0 or not (np.isfinite(points).all() and (points >= 0).all() and (points <= 1).all()):
        raise CheckpointError(
            f"{path}: points must be one or more (y, x) lesion positions as fractions of the image in [0, 1]; {refit}"
        )
    return LocationPrior(points=points, bandwidth=(bandwidth[0], bandwidth[1]))
