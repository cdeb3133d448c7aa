"""Distribution distances through a pretrained feature extractor: FID and KID.

Both are computed by torchmetrics (`FrechetInceptionDistance`, `KernelInceptionDistance`) with our
own extractor module, so neither torch-fidelity nor torchvision is needed. The default extractor is
the FID Inception-v3 (`medsynth.models.inception`) with the published weights; without the weight file
a `MissingWeightsError` names it and where to put it (callers fall back to SWD, which needs none).
Any ``nn.Module`` mapping ``(B, 3, 299, 299)`` floats in [0, 1] to ``(B, F)`` features can replace it.

Protocol: images are mapped from `data_range` to [0, 1] (clipped), one-channel images are repeated to
three channels (Inception knows only colour) and resized to 299 x 299 bilinearly, as pytorch-fid does;
values are not quantised to 8 bits. 3D volumes ``(N, D, H, W)`` are scored on their ``N * D`` 2D
slices along the first spatial axis: the network is 2D, so FID of volumes is FID of their slices.
Real and fake sets may differ in size and in image size.

The matrix square root in FID is taken through two symmetric eigendecompositions (see
`frechet_distance`) instead of torchmetrics' general eigenvalues of the non-symmetric product of the
covariances, which cost about 3x as much for 2048 Inception features (benchmarks/bench_metrics.py).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from medsynth.errors import InputError
from medsynth.metrics.inputs import ArrayLike, DataRange, as_items, data_range_bounds, to_unit_range

INCEPTION_SIZE = 299
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


def _slices(x: ArrayLike, name: str, spatial_dims: int | None, device: torch.device) -> torch.Tensor:
    """All 2D images of `x` as ``(M, H, W)`` float32: images as they are, volumes cut into slices."""
    items = as_items(x, name, spatial_dims, device, dtype=torch.float32)
    return items.reshape(-1, *items.shape[-2:])


def _batches(
    images: torch.Tensor, data_range: DataRange, batch_size: int, size: int | None
) -> Iterator[torch.Tensor]:
    """``(M, H, W)`` images as extractor inputs ``(b, 3, size, size)`` in [0, 1]."""
    for i in range(0, images.shape[0], batch_size):
        x = to_unit_range(images[i : i + batch_size], data_range).unsqueeze(1).expand(-1, 3, -1, -1)
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        yield x


def _prepare(
    real: ArrayLike,
    fake: ArrayLike,
    data_range: DataRange,
    extractor: nn.Module | None,
    weights: str | os.PathLike | None,
    spatial_dims: int | None,
    device: torch.device | str | None,
    min_images: int,
) -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
    data_range_bounds(data_range)  # fail on a bad range before any network is loaded
    if device is None:
        device = real.device if isinstance(real, torch.Tensor) else "cpu"
    device = torch.device(device)
    r = _slices(real, "real", spatial_dims, device)
    f = _slices(fake, "fake", spatial_dims, device)
    for name, images in (("real", r), ("fake", f)):
        if images.shape[0] < min_images:
            raise InputError(
                f"{name} has {images.shape[0]} image(s); this distribution metric needs at least {min_images} "
                "per set (and hundreds for a stable figure)"
            )
    if extractor is None:
        from medsynth.models.inception import load_fid_inception

        extractor = load_fid_inception(weights)
    return r, f, extractor.to(device)


class _Extractor(nn.Module):
    """The caller's extractor, checked to return ``(B, F)`` (as float64), with ``num_features`` for torchmetrics."""

    def __init__(self, extractor: nn.Module, probe: torch.Tensor) -> None:
        super().__init__()
        self.extractor = extractor
        with torch.no_grad():
            self.num_features = self(probe).shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.extractor(x)
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(
                f"the feature extractor must map (B, 3, H, W) images to (B, F) features; for input "
                f"{tuple(x.shape)} it returned {shape}"
            )
        # float64 from here on: KID's kernel sums cancel to small differences that float32 loses.
        return out.double()


@contextmanager
def _evaluating(module: nn.Module) -> Iterator[None]:
    """Eval mode for the duration (dropout or batch statistics would make features random), then restored."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def frechet_distance(
    mu_a: torch.Tensor, cov_a: torch.Tensor, mu_b: torch.Tensor, cov_b: torch.Tensor
) -> torch.Tensor:
    """Fréchet distance of two Gaussians: ``|mu_a - mu_b|^2 + tr(cov_a + cov_b - 2 (cov_a cov_b)^(1/2))``.

    Means ``(F,)`` and covariances ``(F, F)``, symmetric positive semi-definite (singular when there
    are fewer samples than features). ``tr (cov_a cov_b)^(1/2)`` is the sum of the square roots of
    the eigenvalues of ``cov_a cov_b``, which are those of the symmetric ``L^T cov_b L`` with
    ``cov_a = L L^T``, ``L = V diag(sqrt(lambda))`` from the eigendecomposition of ``cov_a``. Round-off
    makes some zero eigenvalues slightly negative; they are clipped to 0. Computed in float64.
    """
    mu_a, cov_a, mu_b, cov_b = (t.double() for t in (mu_a, cov_a, mu_b, cov_b))
    values, vectors = torch.linalg.eigh(cov_a)
    root = vectors * values.clamp(min=0).sqrt()
    inner = torch.linalg.eigvalsh(root.T @ cov_b @ root)
    trace_root = inner.clamp(min=0).sqrt().sum()
    return (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * trace_root


class _FrechetInceptionDistance(FrechetInceptionDistance):
    """torchmetrics' FID (feature accumulation, device handling) with `frechet_distance` as the final step."""

    def compute(self) -> torch.Tensor:
        stats = []
        for total, products, n in (
            (self.real_features_sum, self.real_features_cov_sum, self.real_features_num_samples),
            (self.fake_features_sum, self.fake_features_cov_sum, self.fake_features_num_samples),
        ):
            mean = total / n
            stats += [mean, (products - n * torch.outer(mean, mean)) / (n - 1)]
        return frechet_distance(*stats)


def _feed(
    metric: FrechetInceptionDistance | KernelInceptionDistance,
    real: torch.Tensor,
    fake: torch.Tensor,
    data_range: DataRange,
    batch_size: int,
    size: int | None,
) -> None:
    for images, is_real in ((real, True), (fake, False)):
        for batch in _batches(images, data_range, batch_size, size):
            metric.update(batch, real=is_real)


def fid(
    real: ArrayLike,
    fake: ArrayLike,
    *,
    data_range: DataRange,
    extractor: nn.Module | None = None,
    weights: str | os.PathLike | None = None,
    batch_size: int = 64,
    resize_to: int | None = INCEPTION_SIZE,
    spatial_dims: int | None = None,
    device: torch.device | str | None = None,
) -> float:
    """Fréchet distance between the feature Gaussians of the real and fake sets (0: same statistics).

    `extractor` defaults to the FID Inception loaded from `weights` (a file or folder) or the standard
    places. The extractor is used in eval mode on `device` (moved there). `resize_to=None` feeds
    custom extractors the images at their own size. FID is biased upwards for small sets: compare
    figures only at equal set sizes.
    """
    r, f, extractor = _prepare(real, fake, data_range, extractor, weights, spatial_dims, device, 2)
    with _evaluating(extractor):
        probe = next(_batches(r[:1], data_range, 1, resize_to))
        metric = _FrechetInceptionDistance(feature=_Extractor(extractor, probe), normalize=True).to(r.device)
        _feed(metric, r, f, data_range, batch_size, resize_to)
        return float(metric.compute())


def kid(
    real: ArrayLike,
    fake: ArrayLike,
    *,
    data_range: DataRange,
    subset_size: int | None = None,
    subsets: int = KID_SUBSETS,
    seed: int = 0,
    extractor: nn.Module | None = None,
    weights: str | os.PathLike | None = None,
    batch_size: int = 64,
    resize_to: int | None = INCEPTION_SIZE,
    spatial_dims: int | None = None,
    device: torch.device | str | None = None,
) -> tuple[float, float]:
    """Kernel Inception Distance: mean and SD of the unbiased MMD^2 over random subsets.

    The kernel is the cubic polynomial ``(x.y / F + 1) ** 3`` of Binkowski et al. (2018).
    `subset_size` defaults to 1000 or the smaller set's size if that is smaller; `seed` fixes the
    subset draws so that figures repeat. Other arguments as for `fid`.
    """
    r, f, extractor = _prepare(real, fake, data_range, extractor, weights, spatial_dims, device, 2)
    size = min(KID_SUBSET_SIZE, r.shape[0], f.shape[0]) if subset_size is None else subset_size
    if not 2 <= size <= min(r.shape[0], f.shape[0]):
        raise InputError(
            f"KID subset_size {size} must be between 2 and the smaller set's number of 2D images "
            f"({min(r.shape[0], f.shape[0])})"
        )
    with _evaluating(extractor):
        with warnings.catch_warnings():
            # torchmetrics warns that KID keeps all features in memory; that is the point here.
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            probe = next(_batches(r[:1], data_range, 1, resize_to))
            metric = KernelInceptionDistance(
                feature=_Extractor(extractor, probe), subsets=subsets, subset_size=size, normalize=True
            ).to(r.device)
        _feed(metric, r, f, data_range, batch_size, resize_to)
        with torch.random.fork_rng(devices=[r.device] if r.device.type == "cuda" else []):
            torch.manual_seed(seed)
            mean, std = metric.compute()
        return float(mean), float(std)
