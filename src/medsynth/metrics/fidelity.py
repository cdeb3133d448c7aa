"""Paired fidelity: PSNR, SSIM (optionally inside or outside a mask) and MS-SSIM, in 2D and 3D.

Inputs are numpy arrays or torch tensors whose last `spatial_dims` axes are spatial (2 or 3) and
whose leading axes are items: ``(N, H, W)`` images or ``(N, D, H, W)`` volumes by default
(``spatial_dims = ndim - 1``). Results are float64 numpy arrays of the leading shape, one value per
item. Computation runs in float64 torch on `device` (default: the inputs' device, else the CPU),
because SSIM's variances ``E[x^2] - E[x]^2`` lose all precision in float32 for CT values in HU.

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
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from medsynth.errors import InputError

ArrayLike = np.ndarray | torch.Tensor
DataRange = float | tuple[float, float]

SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# Radius of scikit-image's (and scipy's) Gaussian window: int(truncate * sigma + 0.5), truncate 3.5.
SSIM_RADIUS = int(3.5 * SSIM_SIGMA + 0.5)
# Wang, Simoncelli & Bovik (2003): weights of the five scales, finest first.
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# Items per chunk are chosen so a chunk's five SSIM moment stacks stay around 320 MiB in float64.
_CHUNK_VOXELS = 2**23


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
    """`x` mapped from `data_range` to [0, 1] and clipped there, as pretrained networks expect."""
    lo, hi = data_range_bounds(data_range)
    return ((x - lo) / (hi - lo)).clamp(0, 1)


def as_items(
    x: ArrayLike,
    name: str,
    spatial_dims: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """`x` as a float tensor ``(M, *spatial)``, its leading (item) axes flattened into one.

    Raises `InputError` naming `name` for non-finite values or too few axes.
    """
    if isinstance(x, torch.Tensor):
        t = x
    else:
        a = np.asarray(x)
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_) or np.iscomplexobj(a):
            raise InputError(f"{name} has dtype {a.dtype}; metrics need real-valued numeric images")
        t = torch.from_numpy(np.ascontiguousarray(a))  # views with negative strides (x[::-1]) need a copy
    t = t.detach().to(device=device if device is not None else t.device, dtype=dtype)
    spatial_dims = t.ndim - 1 if spatial_dims is None else spatial_dims
    if spatial_dims not in (2, 3) or t.ndim < spatial_dims:
        raise InputError(
            f"{name} has shape {tuple(t.shape)}; expected (N, H, W) images or (N, D, H, W) volumes "
            f"(spatial_dims 2 or 3, got {spatial_dims})"
        )
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise InputError(f"{name} contains {bad} NaN or infinite values; metrics need finite images")
    return t.reshape(-1, *t.shape[t.ndim - spatial_dims :])


def as_pair(
    real: ArrayLike, fake: ArrayLike, spatial_dims: int | None, device: torch.device | str | None
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """Both inputs as ``(M, *spatial)`` float64 tensors on one device, and the items' leading shape."""
    real, fake = (x if isinstance(x, torch.Tensor) else np.asarray(x) for x in (real, fake))
    if tuple(real.shape) != tuple(fake.shape):
        raise InputError(
            f"real and fake have different shapes {tuple(real.shape)} and {tuple(fake.shape)}; paired metrics "
            "compare each real item with the fake item of the same index, so shapes must match"
        )
    if device is None and isinstance(real, torch.Tensor):
        device = real.device
    r = as_items(real, "real", spatial_dims, device)
    f = as_items(fake, "fake", spatial_dims, r.device)
    return r, f, tuple(real.shape[: real.ndim - (r.ndim - 1)])


def _clip(
    r: torch.Tensor, f: torch.Tensor, data_range: DataRange
) -> tuple[torch.Tensor, torch.Tensor, float]:
    lo, hi = data_range_bounds(data_range)
    if isinstance(data_range, (tuple, list)):
        r, f = r.clamp(lo, hi), f.clamp(lo, hi)
    return r, f, hi - lo


def _chunks(m: int, voxels_per_item: int) -> list[slice]:
    step = max(1, _CHUNK_VOXELS // max(1, voxels_per_item))
    return [slice(i, i + step) for i in range(0, m, step)]


def _out(values: torch.Tensor, leading: tuple[int, ...]) -> np.ndarray:
    return values.cpu().numpy().astype(np.float64).reshape(leading)


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
    were identical rather than drop them silently.
    """
    r, f, leading = as_pair(real, fake, spatial_dims, device)
    r, f, span = _clip(r, f, data_range)
    mse = (r - f).square().flatten(1).mean(1)
    return _out(10 * torch.log10(span**2 / mse), leading)


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    x = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=dtype, device=device)
    w = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
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


def _filter_valid(x: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter without padding: ``(B, *S)`` -> ``(B, *(S - 2 * SSIM_RADIUS))``.

    Each axis is filtered by a product with a banded matrix: on CPU and GPU alike this runs several
    times faster than single-channel ``conv2d``/``conv3d`` in float64, and it is exact.
    """
    w = _gaussian_window(x.dtype, x.device)
    for axis in range(1, x.ndim):
        x = torch.matmul(x.movedim(axis, -1), _band_matrix(x.shape[axis], w)).movedim(-1, axis)
    return x


def _ssim_maps(r: torch.Tensor, f: torch.Tensor, span: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SSIM and contrast-structure maps ``(M, *(S - 10))`` over the window-inside region."""
    c1, c2 = (SSIM_K1 * span) ** 2, (SSIM_K2 * span) ** 2
    m = r.shape[0]
    mu_r, mu_f, e_rr, e_ff, e_rf = _filter_valid(torch.cat([r, f, r * r, f * f, r * f])).split(m)
    var_r = e_rr - mu_r * mu_r
    var_f = e_ff - mu_f * mu_f
    cov = e_rf - mu_r * mu_f
    cs = (2 * cov + c2) / (var_r + var_f + c2)
    luminance = (2 * mu_r * mu_f + c1) / (mu_r * mu_r + mu_f * mu_f + c1)
    return luminance * cs, cs


def _check_window_fits(shape: Sequence[int], what: str) -> None:
    size = 2 * SSIM_RADIUS + 1
    if min(shape) < size:
        raise InputError(
            f"{what} needs every spatial side to be at least {size} (the Gaussian window), got {tuple(shape)}"
        )


def _interior_mask(mask: ArrayLike, r: torch.Tensor, leading: tuple[int, ...], mode: str) -> torch.Tensor:
    """The mask (or its complement) as booleans ``(M, *(S - 10))`` over the window-inside region."""
    if mode not in ("inside", "outside"):
        raise InputError(f"mask_mode must be 'inside' or 'outside', got {mode!r}")
    m = mask if isinstance(mask, torch.Tensor) else torch.from_numpy(np.asarray(mask))
    m = m.to(r.device)
    spatial = tuple(r.shape[1:])
    if tuple(m.shape) == spatial:
        m = m.expand(r.shape)
    elif tuple(m.shape) == leading + spatial:
        m = m.reshape(r.shape)
    else:
        raise InputError(
            f"mask has shape {tuple(m.shape)}; it must have the shape of one item {spatial} or of the whole "
            f"batch {leading + spatial}"
        )
    if m.dtype != torch.bool:
        if not torch.isin(m, torch.tensor([0, 1], dtype=m.dtype, device=m.device)).all():
            raise InputError(
                "mask must be binary (0/1 or booleans); threshold a label or probability map first"
            )
        m = m != 0
    if mode == "outside":
        m = ~m
    crop = (slice(None),) + (slice(SSIM_RADIUS, -SSIM_RADIUS),) * len(spatial)
    return m[crop]


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
    with no such voxel is an `InputError`.
    """
    r, f, leading = as_pair(real, fake, spatial_dims, device)
    _check_window_fits(r.shape[1:], "SSIM")
    r, f, span = _clip(r, f, data_range)
    region = None if mask is None else _interior_mask(mask, r, leading, mask_mode)
    if region is not None:
        empty = (~region.flatten(1).any(1)).nonzero().flatten().tolist()
        if empty:
            raise InputError(
                f"the {mask_mode} of the mask has no voxel at least {SSIM_RADIUS} voxels from the border in "
                f"item(s) {empty[:10]}; drop those items or use a mask that covers them"
            )
    values = []
    for chunk in _chunks(r.shape[0], r[0].numel()):
        ssim_map, _ = _ssim_maps(r[chunk], f[chunk], span)
        if region is None:
            values.append(ssim_map.flatten(1).mean(1))
        else:
            inside = region[chunk].flatten(1).to(ssim_map.dtype)
            values.append((ssim_map.flatten(1) * inside).sum(1) / inside.sum(1))
    return _out(torch.cat(values), leading)


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
    r, f, span = _clip(r, f, data_range)
    weights = torch.tensor(list(betas), dtype=torch.float64, device=r.device)
    pool = F.avg_pool2d if r.ndim == 3 else F.avg_pool3d
    values = []
    for chunk in _chunks(r.shape[0], r[0].numel()):
        rc, fc = r[chunk], f[chunk]
        terms = []
        for scale in range(scales):
            ssim_map, cs_map = _ssim_maps(rc, fc, span)
            last = scale == scales - 1
            terms.append((ssim_map if last else cs_map).flatten(1).mean(1))
            if not last:
                rc, fc = pool(rc.unsqueeze(1), 2).squeeze(1), pool(fc.unsqueeze(1), 2).squeeze(1)
        stacked = torch.stack(terms, 1).clamp(min=0)
        values.append((stacked**weights).prod(1))
    return _out(torch.cat(values), leading)
