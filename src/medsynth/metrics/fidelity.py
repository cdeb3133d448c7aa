"""Paired fidelity: PSNR, SSIM (optionally inside or outside a mask) and MS-SSIM, in 2D and 3D.

Inputs are numpy arrays or torch tensors whose last `spatial_dims` axes are spatial (2 or 3) and
whose leading axes are items: ``(N, H, W)`` images or ``(N, D, H, W)`` volumes by default
(``spatial_dims = ndim - 1``). Results are float64 numpy arrays of the leading shape, one value per
item. Computation runs in float64 on `device` (default: the inputs' device, else the CPU), because
SSIM's variances ``E[x^2] - E[x]^2`` lose precision in float32 for CT values in HU. On the CPU, SSIM
and MS-SSIM run in numpy with scipy's separable ``correlate1d``, an image at a time (in the cache);
on a GPU they run in torch, the Gaussian filter as products with banded matrices. Both give the same
figures to about 1e-15.

``data_range`` is always given by the caller, never guessed from an image (a guess would make
figures of different images incomparable):

- a float ``L``: the data span ``[0, L]``, e.g. ``255`` for 8-bit images or ``1.0`` for [0, 1] data;
- a tuple ``(lo, hi)``: both images are clipped to ``[lo, hi]`` first (as torchmetrics does), and
  ``L = hi - lo``; e.g. ``(-1024, 3071)`` for CT in HU.

SSIM follows Wang et al. (2004) and scikit-image's ``structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False)``: an 11-tap Gaussian window (sigma 1.5, separable), K1 0.01,
K2 0.03, and the mean over the voxels whose window lies inside the image (5 voxels from each border
are left out). torchmetrics' SSIM is not used because it averages over the reflect-padded border
too (its figures differ from scikit-image's by about 0.005 on a 1024^2 MR image) and does not expose
the contrast-structure map that MS-SSIM needs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import torch
from scipy import ndimage

from medsynth.errors import InputError
from medsynth.metrics.inputs import ArrayLike, DataRange, as_pair, data_range_bounds, pair_shapes
from medsynth.metrics.items import item_pieces

SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# Radius of scikit-image's (and scipy's) Gaussian window: int(truncate * sigma + 0.5), truncate 3.5.
SSIM_RADIUS = int(3.5 * SSIM_SIGMA + 0.5)
# Wang, Simoncelli & Bovik (2003): weights of the five scales, finest first.
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# Voxels per chunk of items. On the CPU, scipy filters a 256 x 256 image's four moment maps (2 MiB)
# while they stay in the cache, about 1.5x faster than a batch of them; on a GPU, chunks of 2**23
# voxels keep the moment stacks around 256 MiB in float64.
_CHUNK_VOXELS_CPU = 2**16
_CHUNK_VOXELS_GPU = 2**23
_SLAB_VOXELS = 2**22
"""Items above this many voxels are computed in slabs of about this size (32 MiB per float64 map, at least
20 rows of the first spatial axis for SSIM): a few hundred MiB for SSIM whatever the size of the volume."""


Batch = np.ndarray | torch.Tensor
"""Items ``(M, *S)`` as SSIM computes them: numpy float64 on the CPU, a float64 tensor on a GPU."""


def _native(t: torch.Tensor) -> Batch:
    """A CPU tensor as the numpy array it shares memory with; other tensors as they are.

    SSIM runs in numpy and scipy on the CPU: single-threaded, they match float64 torch on an idle
    CPU and run many times faster on a busy one, where torch's threads wait for each other
    (docs/benchmarks.md, Metrics).
    """
    return t.numpy() if t.device.type == "cpu" else t


def _to_numpy(x: Batch) -> np.ndarray:
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _clip(r: Batch, f: Batch, data_range: DataRange) -> tuple[Batch, Batch, float]:
    lo, hi = data_range_bounds(data_range)
    if isinstance(data_range, (tuple, list)):
        r, f = r.clip(lo, hi), f.clip(lo, hi)
    return r, f, hi - lo


def _chunks(items: Batch, budget: int | None = None) -> list[slice]:
    """Slices of the items of ``(M, *S)`` `items`, each about `budget` voxels (a CPU or GPU default)."""
    if budget is None:
        budget = _CHUNK_VOXELS_CPU if isinstance(items, np.ndarray) else _CHUNK_VOXELS_GPU
    step = max(1, budget // max(1, math.prod(items.shape[1:])))
    return [slice(i, i + step) for i in range(0, items.shape[0], step)]


def psnr(
    real: ArrayLike,
    fake: ArrayLike,
    *,
    data_range: DataRange,
    spatial_dims: int | None = None,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Peak signal-to-noise ratio in dB per item, ``10 log10(L^2 / MSE)``.

    Identical items give ``inf`` (zero error): callers that average over items should report how many
    were identical rather than drop them silently. The squared errors are summed a piece at a time
    (`medsynth.metrics.items.item_pieces`), so `real` and `fake` may be memory maps or
    `medsynth.metrics.items.ItemStack` batches of any size.
    """
    lo, hi = data_range_bounds(data_range)
    leading, spatial = pair_shapes(real, fake, spatial_dims)
    real, fake = _with_leading(real, fake, leading)
    squared = np.zeros(max(1, math.prod(leading)))
    for first, index in _pieces(leading, spatial, real, device):
        r, f, _ = as_pair(real[index], fake[index], len(spatial), device)
        r, f, _ = _clip(r, f, data_range)
        errors = _to_numpy((r - f).square().flatten(1).sum(1))
        squared[first : first + len(errors)] += errors
    with np.errstate(divide="ignore"):
        return (10 * np.log10((hi - lo) ** 2 / (squared / math.prod(spatial)))).reshape(leading)


def _with_leading(real: ArrayLike, fake: ArrayLike, leading: tuple[int, ...]) -> tuple[ArrayLike, ArrayLike]:
    """A single item (no leading axis) as a batch of one, so that every batch is indexed alike."""
    return (real, fake) if leading else (real[None], fake[None])


def _pieces(
    leading: tuple[int, ...],
    spatial: tuple[int, ...],
    real: ArrayLike,
    device: torch.device | str | None,
    halo: int = 0,
) -> Iterator[tuple[int, tuple]]:
    """`item_pieces` with the CPU or GPU chunk size; items above `_SLAB_VOXELS` in slabs with `halo` rows."""
    if device is not None:
        on_gpu = torch.device(device).type != "cpu"
    else:
        on_gpu = isinstance(real, torch.Tensor) and real.device.type != "cpu"
    budget = _CHUNK_VOXELS_GPU if on_gpu else _CHUNK_VOXELS_CPU
    return item_pieces(leading, spatial, budget=budget, slab=_SLAB_VOXELS, halo=halo)


def _gaussian_window() -> np.ndarray:
    """The 11 float64 taps of the normalised Gaussian (sigma 1.5) that scipy's `gaussian_filter` uses."""
    x = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=np.float64)
    w = np.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    return w / w.sum()


def _band_matrix(n: int, w: torch.Tensor) -> torch.Tensor:
    """``(n, n - k + 1)`` matrix whose product with a length-n signal is its valid correlation with `w`."""
    offset = (
        torch.arange(n, device=w.device)[:, None] - torch.arange(n - w.numel() + 1, device=w.device)[None, :]
    )
    inside = (offset >= 0) & (offset < w.numel())
    return torch.where(
        inside, w[offset.clamp(0, w.numel() - 1)], torch.zeros((), dtype=w.dtype, device=w.device)
    )


def _filter_valid(x: Batch) -> Batch:
    """Separable Gaussian filter without padding: ``(B, *S)`` -> ``(B, *(S - 2 * SSIM_RADIUS))``, exact.

    On the CPU, scipy's `correlate1d` (11 taps, in C); on a GPU, products with banded matrices,
    which run as a few large matrix multiplications.
    """
    w = _gaussian_window()
    valid = slice(SSIM_RADIUS, -SSIM_RADIUS)
    if isinstance(x, np.ndarray):
        for axis in range(1, x.ndim):
            # The border outputs (the window reaching outside) are computed and cut off: mode is irrelevant.
            x = ndimage.correlate1d(x, w, axis=axis, mode="constant")[(slice(None),) * axis + (valid,)]
        return x
    wt = torch.from_numpy(w).to(x.device)
    for axis in range(1, x.ndim):
        x = torch.matmul(x.movedim(axis, -1), _band_matrix(x.shape[axis], wt)).movedim(-1, axis)
    return x


def _ssim_maps(r: Batch, f: Batch, span: float) -> tuple[Batch, Batch]:
    """SSIM and contrast-structure maps ``(M, *(S - 10))`` over the window-inside region.

    The variances enter SSIM only as their sum, so four local moments suffice: the means of r and f,
    of ``r^2 + f^2`` and of ``r f`` (scikit-image filters five maps).
    """
    c1, c2 = (SSIM_K1 * span) ** 2, (SSIM_K2 * span) ** 2
    mu_r, mu_f, e_sq, e_rf = (_filter_valid(x) for x in (r, f, r * r + f * f, r * f))
    mu_rf = mu_r * mu_f
    mu_sq = mu_r * mu_r + mu_f * mu_f
    cs = (2 * (e_rf - mu_rf) + c2) / (e_sq - mu_sq + c2)
    luminance = (2 * mu_rf + c1) / (mu_sq + c1)
    return luminance * cs, cs


def _halve(x: Batch) -> Batch:
    """``(M, *S)`` -> ``(M, *(S // 2))``: means of 2 x 2 (x 2) blocks, an odd last row or column dropped."""
    even = x[(slice(None),) + tuple(slice(0, n - n % 2) for n in x.shape[1:])]
    blocks = [x.shape[0]] + [v for n in x.shape[1:] for v in (n // 2, 2)]
    return even.reshape(blocks).mean(tuple(range(2, len(blocks), 2)))


def _check_window_fits(shape: Sequence[int], what: str) -> None:
    size = 2 * SSIM_RADIUS + 1
    if min(shape) < size:
        raise InputError(
            f"{what} needs every spatial side to be at least {size} (the Gaussian window), got {tuple(shape)}"
        )


def _checked_mask(mask: ArrayLike, leading: tuple[int, ...], spatial: tuple[int, ...], mode: str) -> np.ndarray:
    """The mask as booleans of one item's shape or the batch's (its complement for ``"outside"``).

    InputError for another shape, non-binary values, or an item without a voxel in the region where
    the window lies inside the image.
    """
    if mode not in ("inside", "outside"):
        raise InputError(f"mask_mode must be 'inside' or 'outside', got {mode!r}")
    m = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)
    if m.shape not in (spatial, leading + spatial):
        raise InputError(
            f"mask has shape {m.shape}; it must have the shape of one item {spatial} or of the whole "
            f"batch {leading + spatial}"
        )
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise InputError("mask must be binary (0/1 or booleans); threshold a label or probability map first")
        m = m != 0
    if mode == "outside":
        m = ~m
    interior = m[(...,) + (slice(SSIM_RADIUS, -SSIM_RADIUS),) * len(spatial)]
    counts = interior.reshape(-1, math.prod(interior.shape[-len(spatial) :])).sum(1)
    empty = np.flatnonzero(np.broadcast_to(counts, (max(1, math.prod(leading)),)) == 0).tolist()
    if empty:
        raise InputError(
            f"the {mode} of the mask has no voxel at least {SSIM_RADIUS} voxels from the border in "
            f"item(s) {empty[:10]}; drop those items or use a mask that covers them"
        )
    return m


def _region(mask: np.ndarray, index: tuple, n_lead: int, shape: tuple[int, ...], like: Batch) -> Batch:
    """The interior of `mask` for the piece at `index`, of shape ``(m, *S)``, as booleans where `like` is."""
    part = mask[index] if mask.ndim > len(shape) - 1 else np.broadcast_to(mask[index[n_lead:]], shape)
    part = part[(slice(None),) + (slice(SSIM_RADIUS, -SSIM_RADIUS),) * (len(shape) - 1)]
    if isinstance(like, torch.Tensor):
        return torch.from_numpy(np.ascontiguousarray(part)).to(like.device)
    return part


def ssim(
    real: ArrayLike,
    fake: ArrayLike,
    *,
    data_range: DataRange,
    mask: ArrayLike | None = None,
    mask_mode: Literal["inside", "outside"] = "inside",
    spatial_dims: int | None = None,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Structural similarity per item, in [-1, 1]; 1 for identical items (constant ones included).

    With `mask` (binary, the shape of one item or of the batch), the SSIM map is averaged only over
    the voxels inside the mask (``mask_mode="inside"``) or outside it (``"outside"``), both restricted
    to the region where the Gaussian window lies inside the image, as the unmasked mean is. An item
    with no such voxel is an `InputError`. The map is summed a piece at a time (`item_pieces`; a large
    volume in slabs with the window's halo), so `real` and `fake` may be memory maps or
    `medsynth.metrics.items.ItemStack` batches of any size.
    """
    data_range_bounds(data_range)
    leading, spatial = pair_shapes(real, fake, spatial_dims)
    _check_window_fits(spatial, "SSIM")
    region_mask = None if mask is None else _checked_mask(mask, leading, spatial, mask_mode)
    real, fake = _with_leading(real, fake, leading)
    n_lead = max(1, len(leading))
    sums, counts = np.zeros(max(1, math.prod(leading))), np.zeros(max(1, math.prod(leading)))
    for first, index in _pieces(leading, spatial, real, device, SSIM_RADIUS):
        r, f, _ = as_pair(real[index], fake[index], len(spatial), device)
        r, f, span = _clip(_native(r), _native(f), data_range)
        ssim_map, _ = _ssim_maps(r, f, span)
        flat = ssim_map.reshape(ssim_map.shape[0], -1)
        done = slice(first, first + flat.shape[0])
        if region_mask is None:
            sums[done] += _to_numpy(flat.sum(1))
            counts[done] += flat.shape[1]
        else:
            inside = _region(region_mask, index, n_lead, tuple(r.shape), r).reshape(flat.shape)
            sums[done] += _to_numpy((flat * inside).sum(1))
            counts[done] += _to_numpy(inside.sum(1))
    return (sums / counts).reshape(leading)


def ms_ssim(
    real: ArrayLike,
    fake: ArrayLike,
    *,
    data_range: DataRange,
    betas: Sequence[float] = MS_SSIM_BETAS,
    spatial_dims: int | None = None,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Multi-scale SSIM (Wang et al. 2003) per item, in [0, 1].

    At each of ``len(betas)`` scales (2x average-pooled in every spatial axis, finest first), the
    mean contrast-structure term is taken, and at the coarsest the mean SSIM; the result is
    ``prod(cs_j ** beta_j) * ssim_last ** beta_last``. Negative terms (anti-correlated structure) are
    clipped to 0, as pytorch-msssim and torchmetrics do, so that fractional powers stay real. Every
    side must be at least ``11 * 2 ** (len(betas) - 1)`` (176 for the standard five scales); pass
    fewer `betas` for smaller images.
    """
    r, f, leading = as_pair(real, fake, spatial_dims, device)
    scales = len(betas)
    min_side = (2 * SSIM_RADIUS + 1) * 2 ** (scales - 1)
    if scales < 1 or min(r.shape[1:]) < min_side:
        raise InputError(
            f"MS-SSIM with {scales} scales needs every spatial side to be at least {min_side}, got "
            f"{tuple(r.shape[1:])}; pass fewer betas (e.g. betas=MS_SSIM_BETAS[:3]) or use ssim"
        )
    r, f, span = _clip(_native(r), _native(f), data_range)
    values = []
    for chunk in _chunks(r):
        rc, fc = r[chunk], f[chunk]
        terms = []
        for scale in range(scales):
            ssim_map, cs_map = _ssim_maps(rc, fc, span)
            last = scale == scales - 1
            term = ssim_map if last else cs_map
            terms.append(_to_numpy(term.reshape(term.shape[0], -1).mean(1)))
            if not last:
                rc, fc = _halve(rc), _halve(fc)
        values.append(np.prod(np.clip(np.stack(terms, 1), 0, None) ** np.asarray(betas, dtype=np.float64), 1))
    return np.concatenate(values).reshape(leading)
