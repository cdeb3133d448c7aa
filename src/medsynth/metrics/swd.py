"""Sliced Wasserstein Distance (SWD) on Laplacian-pyramid patches, as defined for progressive GANs.

Karras et al., "Progressive Growing of GANs" (ICLR 2018), section 5 and their
``metrics/sliced_wasserstein.py``: every image is decomposed into a Laplacian pyramid down to 16 px;
at each level 128 random 7x7 neighbourhoods per image are taken as descriptors; each set of
descriptors (real, synthetic) is normalised by its own per-channel mean and standard deviation; the
two sets are compared by the sliced Wasserstein distance over 4 x 128 random unit directions, and the
result is multiplied by 1e3. The figure is reported per level (named by the level's side length in
pixels) and averaged over levels.

It needs no pretrained weights, which makes it the distribution metric of choice wherever the
Inception weights of FID/KID are missing. Grey-level images give descriptors of ``1 x 7 x 7``: no
colour channels are invented. Because each set is normalised on its own, SWD ignores global affine
intensity changes (brightness, contrast) and measures structure and texture at each scale; the paired
metrics (PSNR, SSIM) cover intensity.

All randomness comes from ``numpy.random.default_rng`` seeded by `seed`; the same inputs, numbers of
patches and seed give the same figure, independent of `batch_size`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import pairwise

import numpy as np
from scipy import ndimage

from medsynth.errors import InputError
from medsynth.metrics.inputs import BATCH_SHAPES, finite_array
from medsynth.metrics.items import leading_runs

PATCH_SIZE = 7
MIN_RESOLUTION = 16
_RADIUS = PATCH_SIZE // 2
# The binomial 5-tap filter of cv2.pyrDown / pyrUp, applied separably (its 5x5 form is the outer product).
_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0], dtype=np.float32) / 16.0
BATCH_VOXELS = 2**22
"""Voxels of one batch of images at most (16 MiB of float32; the pyramid and its temporaries take a few
times that): 64 images of 256x256, fewer of larger ones, so that memory does not grow with the image size."""


def pyramid_resolutions(height: int, width: int) -> list[int]:
    """Side lengths (the shorter side) of the pyramid levels: halved until below 16 px."""
    res, out = min(height, width), []
    while res >= MIN_RESOLUTION:
        out.append(res)
        res //= 2
    return out


def _pyr_down(x: np.ndarray) -> np.ndarray:
    """Blur with the binomial filter (mirror border) and keep every second row and column.

    `x` is ``(..., H, W)``; the result is ``(..., ceil(H/2), ceil(W/2))``. Decimating after each
    separable pass gives the same values as filtering fully first, at a fraction of the work.
    """
    x = ndimage.correlate1d(x, _BINOMIAL, axis=-1, mode="mirror")[..., ::2]
    return ndimage.correlate1d(x, _BINOMIAL, axis=-2, mode="mirror")[..., ::2, :]


def _upsample_axis(x: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Insert zeros between samples along `axis`, blur with twice the binomial filter, crop to `size`."""
    shape = list(x.shape)
    shape[axis] = 2 * x.shape[axis]
    up = np.zeros(shape, dtype=x.dtype)
    index = [slice(None)] * x.ndim
    index[axis] = slice(None, None, 2)
    up[tuple(index)] = x
    up = ndimage.correlate1d(up, 2.0 * _BINOMIAL, axis=axis, mode="mirror")
    index[axis] = slice(0, size)
    return up[tuple(index)]


def _pyr_up(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Expand ``(..., h, w)`` to ``(..., H, W) = shape`` as cv2.pyrUp does (zero insertion + 4x filter)."""
    return _upsample_axis(_upsample_axis(x, -1, shape[1]), -2, shape[0])


def laplacian_pyramid(images: np.ndarray, levels: int) -> list[np.ndarray]:
    """Laplacian pyramid of ``(B, C, H, W)`` images: `levels` arrays, finest first, the last one the low-pass."""
    gauss = [np.asarray(images, dtype=np.float32)]
    for _ in range(1, levels):
        gauss.append(_pyr_down(gauss[-1]))
    bands = [fine - _pyr_up(coarse, fine.shape[-2:]) for fine, coarse in pairwise(gauss)]
    return bands + [gauss[-1]]


def _sample_centres(rng: np.random.Generator, n_images: int, shape: tuple[int, int], per_image: int) -> np.ndarray:
    """Patch centres ``(n_images, per_image, 2)`` (row, column) whose 7x7 neighbourhood lies inside `shape`."""
    rows = rng.integers(_RADIUS, shape[0] - _RADIUS, size=(n_images, per_image))
    cols = rng.integers(_RADIUS, shape[1] - _RADIUS, size=(n_images, per_image))
    return np.stack([rows, cols], axis=-1)


def extract_patches(level: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """7x7 neighbourhoods of ``(B, C, H, W)`` `level` around ``(B, P, 2)`` centres -> ``(B * P, C, 7, 7)``."""
    offsets = np.arange(-_RADIUS, _RADIUS + 1)
    rows = centres[:, :, 0, None, None] + offsets[:, None]
    cols = centres[:, :, 1, None, None] + offsets[None, :]
    batch = np.arange(level.shape[0])[:, None, None, None]
    patches = level.transpose(0, 2, 3, 1)[batch, rows, cols]  # (B, P, 7, 7, C)
    return np.ascontiguousarray(patches.transpose(0, 1, 4, 2, 3)).reshape(-1, level.shape[1], PATCH_SIZE, PATCH_SIZE)


def normalise_descriptors(desc: np.ndarray) -> np.ndarray:
    """Centre ``(M, C, 7, 7)`` descriptors and scale them to unit SD per channel -> ``(M, C * 49)``.

    A channel with zero spread (a constant image set) is only centred, so it compares as a point mass
    at zero instead of producing NaN.
    """
    desc = desc - desc.mean(axis=(0, 2, 3), keepdims=True)
    std = desc.std(axis=(0, 2, 3), keepdims=True)
    desc = desc / np.where(std > 0, std, 1.0)
    return desc.reshape(desc.shape[0], -1).astype(np.float32)


def wasserstein_1d_sorted(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """W1 distance between empirical distributions given as sorted samples along the last axis.

    `a` is ``(..., n)``, `b` is ``(..., m)``; the result is ``(...)``. It integrates
    ``|Q_a(u) - Q_b(u)|`` over ``u`` in (0, 1] on the union of both quantile grids, which for
    ``n == m`` is the mean absolute difference of the sorted samples (the progressive-GAN formula)
    and for ``n != m`` the exact distance (``scipy.stats.wasserstein_distance``).
    """
    n, m = a.shape[-1], b.shape[-1]
    grid = np.union1d(np.arange(1, n + 1) / n, np.arange(1, m + 1) / m)
    widths = np.diff(grid, prepend=0.0)
    mids = grid - widths / 2
    ia = np.minimum((mids * n).astype(np.intp), n - 1)
    ib = np.minimum((mids * m).astype(np.intp), m - 1)
    return np.sum(np.abs(a[..., ia] - b[..., ib]) * widths.astype(a.dtype), axis=-1)


def random_directions(rng: np.random.Generator, dim: int, count: int) -> np.ndarray:
    """``(dim, count)`` unit vectors drawn uniformly on the sphere."""
    dirs = rng.standard_normal((dim, count))
    return (dirs / np.linalg.norm(dirs, axis=0, keepdims=True)).astype(np.float32)


def sliced_wasserstein(
    desc_a: np.ndarray, desc_b: np.ndarray, rng: np.random.Generator, *, repeats: int = 4, directions: int = 128
) -> float:
    """Mean W1 distance of ``(M, K)`` and ``(M', K)`` descriptor sets projected on random unit directions."""
    results = []
    for _ in range(repeats):
        dirs = random_directions(rng, desc_a.shape[1], directions)
        proj_a = np.sort((desc_a @ dirs).T, axis=-1)  # (directions, M): sort along contiguous rows
        proj_b = np.sort((desc_b @ dirs).T, axis=-1)
        results.append(float(np.mean(wasserstein_1d_sorted(proj_a, proj_b))))
    return float(np.mean(results))


class _Images:
    """One set of SWD's images, read a batch at a time as ``(b, C, H, W)`` float32.

    Grey ``(N, H, W)`` images or ``(N, D, H, W)`` volumes (taken as ``N * D`` slices) are any array-like
    (numpy, a memory map, a tensor, a `medsynth.metrics.items.ItemStack`) and are read batch by batch;
    multi-channel images (`channel_axis`) are converted whole.
    """

    def __init__(self, x: object, name: str, channel_axis: int | None) -> None:
        self.name = name
        if channel_axis is None:
            shape = tuple(x.shape)
            if len(shape) not in (3, 4) or shape[0] == 0:
                raise InputError(f"SWD: {name} has shape {shape}; give {BATCH_SHAPES}")
            self.source, self.lead, self.shape = x, shape[:-2], (1, *shape[-2:])
        else:
            shapes = "(N, C, H, W) or (N, H, W, C) images with channel_axis"
            arr = finite_array(x, name, "SWD", ndims=(4,), shapes=shapes, dtype=np.float32)
            arr = np.moveaxis(arr, channel_axis, 1)
            self.source, self.lead, self.shape = arr, arr.shape[:1], arr.shape[1:]
        self.count = math.prod(self.lead)
        if min(self.shape[-2:]) < MIN_RESOLUTION:
            raise InputError(
                f"SWD: {name} images are {self.shape[-2]}x{self.shape[-1]} px; SWD needs at least "
                f"{MIN_RESOLUTION}x{MIN_RESOLUTION} (its coarsest pyramid level)"
            )

    def batches(self, size: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(first image, (b, C, H, W) float32)`` of at most `size` images each, in order."""
        for first, index in leading_runs(self.lead, 0, self.count, size):
            batch = finite_array(self.source[index], self.name, "SWD", ndims=(3, 4), dtype=np.float32)
            yield first, batch.reshape(-1, *self.shape)


def _descriptors(images: _Images, centres: list[np.ndarray], levels: int, batch_size: int) -> list[np.ndarray]:
    """Normalised descriptors per pyramid level for a set of images, given each level's centres."""
    per_level: list[list[np.ndarray]] = [[] for _ in range(levels)]
    for first, batch in images.batches(batch_size):
        stop = first + len(batch)
        for lod, band in enumerate(laplacian_pyramid(batch, levels)):
            per_level[lod].append(extract_patches(band, centres[lod][first:stop]))
    return [normalise_descriptors(np.concatenate(chunks)) for chunks in per_level]


def _level_shapes(shape: tuple[int, int], levels: int) -> list[tuple[int, int]]:
    shapes = [shape]
    for _ in range(1, levels):
        shapes.append(((shapes[-1][0] + 1) // 2, (shapes[-1][1] + 1) // 2))
    return shapes


def swd(
    real: object,
    fake: object,
    *,
    seed: int = 0,
    patches_per_image: int = 128,
    repeats: int = 4,
    directions: int = 128,
    channel_axis: int | None = None,
    batch_size: int = 64,
) -> dict[str, float]:
    """Sliced Wasserstein Distance x 1e3 between two image sets, per pyramid level and averaged.

    `real` and `fake` are ``(N, H, W)`` grey images or ``(N, D, H, W)`` volumes (taken as ``N * D``
    slices), numpy arrays, memory maps, tensors or `ItemStack` batches, read `batch_size` images at a
    time (fewer when they would exceed `BATCH_VOXELS`), of the same ``H x W`` (the counts may differ); with
    `channel_axis` set, ``(N, C, H, W)`` or ``(N, H, W, C)`` multi-channel images. Returns
    ``{"256": ..., "128": ..., ..., "16": ..., "mean": ...}``: keys are each level's shorter side in
    pixels. Lower is better; identical distributions give values near 0 (not exactly 0, because the
    patches of the two sets are drawn independently).
    """
    real_img = _Images(real, "real", channel_axis)
    fake_img = _Images(fake, "fake", channel_axis)
    if real_img.shape != fake_img.shape:
        raise InputError(
            f"SWD: real images are {real_img.shape} (C, H, W) but fake images are {fake_img.shape}; "
            "resample them to the same size (medsynth.metrics.resample)"
        )
    if patches_per_image < 1 or repeats < 1 or directions < 1:
        raise InputError("SWD: patches_per_image, repeats and directions must be at least 1")
    resolutions = pyramid_resolutions(*real_img.shape[-2:])
    shapes = _level_shapes(real_img.shape[-2:], len(resolutions))
    rng_real, rng_fake, rng_dirs = (np.random.default_rng([seed, k]) for k in range(3))
    centres_real = [_sample_centres(rng_real, real_img.count, s, patches_per_image) for s in shapes]
    centres_fake = [_sample_centres(rng_fake, fake_img.count, s, patches_per_image) for s in shapes]
    batch_size = max(1, min(batch_size, BATCH_VOXELS // math.prod(real_img.shape)))
    desc_real = _descriptors(real_img, centres_real, len(resolutions), batch_size)
    desc_fake = _descriptors(fake_img, centres_fake, len(resolutions), batch_size)
    out = {
        str(res): 1e3 * sliced_wasserstein(a, b, rng_dirs, repeats=repeats, directions=directions)
        for res, a, b in zip(resolutions, desc_real, desc_fake)
    }
    out["mean"] = float(np.mean(list(out.values())))
    return out
